//! Kubernetes part 1 end to end on the real image: a StatefulSet emulated with Docker ([`PodSet`])
//! bootstraps from pod identity, keeps a SIGKILLed pod's identity, heals a pod whose volume was
//! wiped, and is scraped by a real Prometheus server loaded with the chart's alert rules.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{etcdctl, free_port, wait_until};
use super::pods::PodSet;

/// One member as `etcdctl member list -w json` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    id: u64,
    name: String,
    learner: bool,
}

fn member_list(endpoint: &str) -> Option<Vec<Listed>> {
    let c = etcdctl(endpoint, &["member", "list", "-w", "json"]);
    if !c.ok {
        return None;
    }
    let v: Value = serde_json::from_str(&c.stdout).ok()?;
    Some(
        v["members"]
            .as_array()?
            .iter()
            .map(|m| Listed {
                id: m["ID"].as_u64().unwrap_or_default(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                learner: m["isLearner"].as_bool().unwrap_or(false),
            })
            .collect(),
    )
}

/// Every pod answers with the same list of `n` started voters named after the pods.
fn formed(set: &PodSet, n: usize) -> Option<Vec<Listed>> {
    let mut first: Option<Vec<Listed>> = None;
    for p in &set.pods {
        let mut l = member_list(&p.endpoint())?;
        l.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = l.iter().map(|m| m.name.as_str()).collect();
        let want: Vec<String> = (0..n).map(|i| format!("oxcd-{i}")).collect();
        if names != want || l.iter().any(|m| m.learner) {
            return None;
        }
        if first.as_ref().is_some_and(|f| f != &l) {
            return None;
        }
        first = Some(l);
    }
    first
}

fn member_id(set: &PodSet, ordinal: usize) -> u64 {
    let c = etcdctl(
        &set.pods[ordinal].endpoint(),
        &["endpoint", "status", "-w", "json"],
    );
    assert!(c.ok, "endpoint status: {}", c.stderr);
    let v: Value = serde_json::from_str(&c.stdout).expect("status json");
    v[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member_id")
}

fn serializable_get(endpoint: &str, key: &str) -> Option<String> {
    let c = etcdctl(
        endpoint,
        &["get", key, "--consistency=s", "--print-value-only"],
    );
    c.ok.then(|| c.stdout.trim().to_string())
}

async fn wait_formed(set: &PodSet, n: usize, timeout: Duration) -> Vec<Listed> {
    let mut out = None;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(l) = formed(set, n) {
            out = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out.unwrap_or_else(|| panic!("no {n}-member cluster of started voters within {timeout:?}"))
}

/// A real Prometheus server scraping every pod's metrics port, with the chart's alert rules.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(set: &PodSet) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/oxcd/files/alerts.yaml");
        assert!(
            rules.exists(),
            "the chart's alert rules at {}",
            rules.display()
        );
        let targets: Vec<String> = set
            .pods
            .iter()
            .map(|p| format!("'127.0.0.1:{}'", p.metrics_port))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: oxcd\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(
            std::env::var("OXCD_PROMETHEUS").unwrap_or_else(|_| "prometheus".to_string()),
        )
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus (Debian's prometheus package)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn api(&self, path: &str) -> Option<Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The instances for which `query` is 1.
    fn ones(&self, query: &str) -> Vec<String> {
        let Some(v) = self.api(&format!("/api/v1/query?query={query}")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["value"][1].as_str() == Some("1"))
                    .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_forms_restarts_heals_and_is_scraped() {
    let set = PodSet::new(3);
    let t0 = Instant::now();
    set.start_all();
    let members = wait_formed(&set, 3, Duration::from_secs(60)).await;
    eprintln!(
        "three pods started at once formed a cluster in {:?}",
        t0.elapsed()
    );

    // The probes the chart points at answer on every pod's metrics port.
    for p in &set.pods {
        for probe in ["/livez", "/readyz"] {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                ])
                .arg(format!("{}{probe}", p.metrics_url()))
                .output()
                .expect("curl");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "200",
                "{probe} on {}",
                p.name
            );
        }
    }

    // The real etcdctl works through every pod.
    let c = etcdctl(&set.endpoints(), &["put", "k8s", "works"]);
    assert!(c.ok, "put: {}", c.stderr);
    for p in &set.pods {
        let c = etcdctl(&p.endpoint(), &["get", "k8s", "--print-value-only"]);
        assert_eq!(
            c.stdout.trim(),
            "works",
            "linearizable get through {}",
            p.name
        );
    }

    // A SIGKILLed pod restarted with its volume keeps its member ID and catches up.
    let id1 = member_id(&set, 1);
    set.kill(1, "KILL");
    set.wait_stopped(1).await;
    for i in 0..50 {
        let c = etcdctl(
            &set.pods[0].endpoint(),
            &["put", &format!("while-down-{i}"), "v"],
        );
        assert!(c.ok, "put while oxcd-1 is down: {}", c.stderr);
    }
    set.restart(1);
    let ep1 = set.pods[1].endpoint();
    wait_until("oxcd-1 to catch up", Duration::from_secs(60), || {
        let ep1 = ep1.clone();
        async move { serializable_get(&ep1, "while-down-49").as_deref() == Some("v") }
    })
    .await;
    assert_eq!(
        member_id(&set, 1),
        id1,
        "a restarted pod keeps its member ID"
    );
    assert_eq!(wait_formed(&set, 3, Duration::from_secs(30)).await, members);

    // A pod whose volume is wiped rejoins as a learner, is promoted, and leaves no stale entry.
    let id2 = member_id(&set, 2);
    set.delete_with_volume(2);
    let t1 = Instant::now();
    set.start(2);
    let healed = wait_formed(&set, 3, Duration::from_secs(90)).await;
    eprintln!(
        "a wiped pod rejoined and was promoted in {:?}",
        t1.elapsed()
    );
    let new2 = healed
        .iter()
        .find(|m| m.name == "oxcd-2")
        .expect("oxcd-2")
        .id;
    assert_ne!(new2, id2, "the wiped pod is a new member");
    assert!(
        healed.iter().all(|m| m.id != id2),
        "no stale entry: {healed:?}"
    );
    let logs = set.logs(2);
    assert!(
        logs.contains("added as a learner"),
        "oxcd-2 joined as a learner:\n{logs}"
    );
    assert!(
        serializable_get(&set.pods[2].endpoint(), "while-down-49").as_deref() == Some("v"),
        "the rejoined pod has the data"
    );
    let s = set.endpoints();
    wait_until("equal HashKV on every pod", Duration::from_secs(30), || {
        let s = s.clone();
        async move { hashes_equal(&s) }
    })
    .await;

    // A member removed while its pod was down: on restart its data is moved aside (never
    // deleted) and it joins again as a learner.
    let id1 = member_id(&set, 1);
    set.kill(1, "TERM");
    set.wait_stopped(1).await;
    let c = etcdctl(
        &set.pods[0].endpoint(),
        &["member", "remove", &format!("{id1:x}")],
    );
    assert!(c.ok, "member remove: {}", c.stderr);
    let t2 = Instant::now();
    set.restart(1);
    let back = wait_formed(&set, 3, Duration::from_secs(90)).await;
    eprintln!(
        "a removed member moved its data aside and rejoined in {:?}",
        t2.elapsed()
    );
    assert!(
        back.iter().all(|m| m.id != id1),
        "oxcd-1 is a new member: {back:?}"
    );
    let kept = set.exec(1, &["ls", "/var/lib/oxcd"]);
    assert!(
        kept.lines().any(|l| l.starts_with("data.removed-")),
        "the removed member's data was kept aside: {kept}"
    );

    // A member entry added for a pod that then crashed before starting is reused, not duplicated.
    let id2 = member_id(&set, 2);
    set.kill(2, "KILL");
    set.wait_stopped(2).await;
    let c = etcdctl(
        &set.pods[0].endpoint(),
        &["member", "remove", &format!("{id2:x}")],
    );
    assert!(c.ok, "member remove: {}", c.stderr);
    set.delete_with_volume(2);
    let peer2 = "--peer-urls=http://oxcd-2.oxcd-headless.default.svc.cluster.local:2380";
    let c = etcdctl(
        &set.pods[0].endpoint(),
        &["member", "add", "oxcd-2", "--learner", peer2],
    );
    assert!(c.ok, "member add: {}", c.stderr);
    let added = member_list(&set.pods[0].endpoint())
        .expect("member list")
        .into_iter()
        .find(|m| m.name.is_empty())
        .expect("the unstarted entry")
        .id;
    let t3 = Instant::now();
    set.start(2);
    let reused = wait_formed(&set, 3, Duration::from_secs(90)).await;
    eprintln!(
        "a pod started into its pre-added entry in {:?}",
        t3.elapsed()
    );
    assert_eq!(
        reused.iter().find(|m| m.name == "oxcd-2").map(|m| m.id),
        Some(added),
        "oxcd-2 started as the entry that was added for it"
    );

    // A real Prometheus scrapes every pod and loads the chart's alert rules.
    let t4 = Instant::now();
    let prom = Prometheus::start(&set);
    let want: Vec<String> = {
        let mut w: Vec<String> = set
            .pods
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.metrics_port))
            .collect();
        w.sort();
        w
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if prom.ones("up") == want && prom.ones("etcd_server_has_leader") == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus: up {:?}, has_leader {:?}, want {want:?}",
            prom.ones("up"),
            prom.ones("etcd_server_has_leader")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("prometheus scraped every pod within {:?}", t4.elapsed());
    let rules = prom.api("/api/v1/rules").expect("rules API");
    let names: Vec<String> = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"].as_str() == Some("ok"))
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    for alert in ["etcdMembersDown", "etcdNoLeader", "etcdInsufficientMembers"] {
        assert!(
            names.iter().any(|n| n == alert),
            "{alert} loaded: {names:?}"
        );
    }
}

fn hashes_equal(endpoints: &str) -> bool {
    let c = etcdctl(endpoints, &["endpoint", "hashkv", "-w", "json"]);
    let Ok(v) = serde_json::from_str::<Value>(&c.stdout) else {
        return false;
    };
    let Some(a) = v.as_array() else { return false };
    let hs: Vec<Option<u64>> = a.iter().map(|e| e["HashKV"]["hash"].as_u64()).collect();
    hs.len() == 3 && hs.iter().all(|h| h.is_some() && *h == hs[0])
}

/// With the chart's root password, the members turn authentication on by themselves, and every
/// join and promotion goes through as root.
#[tokio::test(flavor = "multi_thread")]
async fn statefulset_with_root_password_enables_auth() {
    let set = PodSet::with_values(
        3,
        &["auth.rbac.create=true", "auth.rbac.rootPassword=s3cret-pw"],
    );
    set.start_all();
    let ep = set.pods[0].endpoint();
    wait_until("authentication on", Duration::from_secs(90), || {
        let ep = ep.clone();
        async move {
            let c = etcdctl(&ep, &["get", "k"]);
            !c.ok && c.stderr.contains("user name is empty")
        }
    })
    .await;
    let root = "--user=root:s3cret-pw";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = etcdctl(&set.endpoints(), &[root, "member", "list", "-w", "json"]);
        let v: Value = serde_json::from_str(&c.stdout).unwrap_or(Value::Null);
        let voters = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| {
                        !m["name"].as_str().unwrap_or("").is_empty()
                            && !m["isLearner"].as_bool().unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0);
        if voters == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three voters under auth: {}",
            c.stdout
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = etcdctl(&set.endpoints(), &[root, "put", "k", "v"]);
    assert!(c.ok, "root writes: {}", c.stderr);
    let c = etcdctl(&set.endpoints(), &["--user=root:wrong", "get", "k"]);
    assert!(
        !c.ok && c.stderr.contains("authentication failed"),
        "{}",
        c.stderr
    );
}
