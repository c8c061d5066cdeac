//! A StatefulSet emulated with Docker: containers of the real image named like the pods, each with
//! its own volume, on a network whose aliases are the pods' headless DNS names, started with the
//! environment the rendered chart gives them (read from `helm template`, so chart and test cannot
//! drift).
//!
//! Invariants: every container, volume and network a [`PodSet`] creates carries its unique prefix
//! and is removed when it drops (also on a failing assertion); host tools reach the members only
//! through ports published on 127.0.0.1.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::harness::{free_port, wait_until};

/// The image the chart points at by default (`oxcd:<appVersion>`).
pub const IMAGE: &str = concat!("oxcd:", env!("CARGO_PKG_VERSION"));

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `docker` with `args`; returns stdout, or panics with stderr when `check`.
pub fn docker(args: &[&str], check: bool) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    let ok = out.status.success();
    if check && !ok {
        panic!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (ok, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A second build of the same source whose binary reports `<version>+next`: the "new version"
/// of the upgrade test.
pub const NEXT_IMAGE: &str = "oxcd:it-next";

/// Builds the image once per test process (`scripts/image.sh`, incremental, serialized across
/// processes with a lock file).
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_image(&[], None));
}

/// Builds [`NEXT_IMAGE`] once per test process.
pub fn ensure_next_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_image(&["--tag", NEXT_IMAGE], Some("next")));
}

fn build_image(args: &[&str], label: Option<&str>) {
    {
        let mut cmd = Command::new("flock");
        cmd.arg(std::env::temp_dir().join("oxcd-image.lock"))
            .arg(repo().join("scripts/image.sh"))
            .args(args)
            .current_dir(repo());
        match label {
            Some(l) => cmd.env("OXCD_BUILD", l),
            None => cmd.env_remove("OXCD_BUILD"),
        };
        let out = cmd.output().expect("run scripts/image.sh");
        assert!(
            out.status.success(),
            "scripts/image.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `helm` the chart tests use.
pub fn helm_bin() -> PathBuf {
    std::env::var("OXCD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/local/lib/oxcd-tools/bin/helm"))
}

/// One environment variable of the rendered StatefulSet: a value, or the pod's own name or
/// namespace (downward API).
#[derive(Debug, Clone)]
enum EnvSource {
    Value(String),
    PodName,
    Namespace,
}

/// The StatefulSet's container environment from `helm template` with `sets`.
fn rendered_env(sets: &[&str]) -> Vec<(String, EnvSource)> {
    let mut cmd = Command::new(helm_bin());
    cmd.args(["template", "oxcd", "charts/oxcd", "--namespace", "default"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.current_dir(repo()).output().expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("rendered YAML"))
        .collect();
    for v in &docs {
        if v["kind"].as_str() != Some("StatefulSet") {
            continue;
        }
        let containers = v["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        let c = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("oxcd"))
            .expect("the oxcd container");
        let mut env = Vec::new();
        for e in c["env"].as_sequence().expect("env") {
            let name = e["name"].as_str().expect("env name").to_string();
            let src = if let Some(v) = e["value"].as_str() {
                EnvSource::Value(v.to_string())
            } else if e["valueFrom"]["secretKeyRef"].is_mapping() {
                let secret = e["valueFrom"]["secretKeyRef"]["name"]
                    .as_str()
                    .unwrap_or("");
                let key = e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap_or("");
                EnvSource::Value(secret_value(&docs, secret, key))
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => EnvSource::PodName,
                    Some("metadata.namespace") => EnvSource::Namespace,
                    other => panic!("{name}: unexpected env source {other:?}"),
                }
            };
            env.push((name, src));
        }
        return env;
    }
    panic!("no StatefulSet in the rendered chart");
}

use serde::Deserialize;

/// The value of `key` in the rendered Secret `name` (its `stringData`, or its base64 `data`).
fn secret_value(docs: &[serde_yaml::Value], name: &str, key: &str) -> String {
    let secret = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Secret") && d["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("no rendered Secret {name}"));
    if let Some(v) = secret["stringData"][key].as_str() {
        return v.to_string();
    }
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no key {key} in Secret {name}"));
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One emulated pod.
#[derive(Debug)]
pub struct Pod {
    /// The pod name (`oxcd-N`).
    pub name: String,
    /// The container's name.
    pub container: String,
    /// The volume's name.
    pub volume: String,
    /// Client port published on 127.0.0.1.
    pub client_port: u16,
    /// Metrics port published on 127.0.0.1.
    pub metrics_port: u16,
}

impl Pod {
    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<metrics port>`.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }
}

/// A StatefulSet of containers.
pub struct PodSet {
    prefix: String,
    network: String,
    env: Vec<(String, EnvSource)>,
    /// The pods, by ordinal (a scaled-down pod keeps its entry and volume, as a PVC stays).
    pub pods: Vec<Pod>,
}

impl PodSet {
    /// Renders the chart with `replicas` and prepares (but does not start) that many pods.
    pub fn new(replicas: usize) -> PodSet {
        PodSet::with_values(replicas, &[])
    }

    /// As [`PodSet::new`], with more `--set` values for the chart.
    pub fn with_values(replicas: usize, sets: &[&str]) -> PodSet {
        ensure_image();
        let mut all = vec![format!("replicaCount={replicas}")];
        all.extend(sets.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let env = rendered_env(&all);
        let prefix = format!("oxcd-it-{}-{}", std::process::id(), free_port());
        let network = format!("{prefix}-net");
        docker(&["network", "create", &network], true);
        let mut set = PodSet {
            prefix,
            network,
            env,
            pods: Vec::new(),
        };
        for i in 0..replicas {
            set.add_pod(i);
        }
        set
    }

    /// Adds environment variables to every pod started from now on (after the chart's).
    pub fn add_env(&mut self, vars: &[(&str, &str)]) {
        for (k, v) in vars {
            self.env
                .push((k.to_string(), EnvSource::Value(v.to_string())));
        }
    }

    /// Makes sure pods `0..=ordinal` have an entry (name, volume and ports), as a scale-up does.
    pub fn ensure_pod(&mut self, ordinal: usize) {
        while self.pods.len() <= ordinal {
            self.add_pod(self.pods.len());
        }
    }

    /// The address containers reach the host at (the network's gateway).
    pub fn host_address(&self) -> String {
        let (_, gw) = docker(
            &[
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Gateway}}",
                &self.network,
            ],
            true,
        );
        gw
    }

    /// Removes pod `ordinal`'s container and keeps its volume.
    pub fn remove_container(&self, ordinal: usize) {
        docker(&["rm", "-f", &self.pods[ordinal].container], false);
    }

    fn add_pod(&mut self, ordinal: usize) {
        let name = format!("oxcd-{ordinal}");
        self.pods.push(Pod {
            container: format!("{}-{name}", self.prefix),
            volume: format!("{}-{name}-data", self.prefix),
            name,
            client_port: free_port(),
            metrics_port: free_port(),
        });
    }

    /// Creates and starts pod `ordinal`'s container (its volume is created on first use).
    pub fn start(&self, ordinal: usize) {
        self.start_image(ordinal, IMAGE);
    }

    /// As [`PodSet::start`], from `image`.
    pub fn start_image(&self, ordinal: usize, image: &str) {
        let p = &self.pods[ordinal];
        let alias = format!("{}.oxcd-headless.default.svc.cluster.local", p.name);
        let client = format!("127.0.0.1:{}:2379", p.client_port);
        let metrics = format!("127.0.0.1:{}:2381", p.metrics_port);
        let mount = format!("{}:/var/lib/oxcd", p.volume);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &p.container,
            "--hostname",
            &p.name,
            "--network",
            &self.network,
            "--network-alias",
            &alias,
            "-p",
            &client,
            "-p",
            &metrics,
            "-v",
            &mount,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--user",
            "10001:10001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, src) in &self.env {
            let v = match src {
                EnvSource::Value(v) => v.clone(),
                EnvSource::PodName => p.name.clone(),
                EnvSource::Namespace => "default".to_string(),
            };
            args.push("-e".to_string());
            args.push(format!("{k}={v}"));
        }
        args.push(image.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args, true);
    }

    /// Starts every pod at once (`podManagementPolicy: Parallel`).
    pub fn start_all(&self) {
        for i in 0..self.pods.len() {
            self.start(i);
        }
    }

    /// Sends `signal` to pod `ordinal`'s container.
    pub fn kill(&self, ordinal: usize, signal: &str) {
        docker(&["kill", "-s", signal, &self.pods[ordinal].container], true);
    }

    /// Waits for pod `ordinal`'s container to stop.
    pub async fn wait_stopped(&self, ordinal: usize) {
        let c = self.pods[ordinal].container.clone();
        wait_until("the container to stop", Duration::from_secs(60), || {
            let c = c.clone();
            async move {
                let (_, running) = docker(&["inspect", "-f", "{{.State.Running}}", &c], false);
                running == "false"
            }
        })
        .await;
    }

    /// Starts pod `ordinal`'s stopped container again, with its volume (a pod restart).
    pub fn restart(&self, ordinal: usize) {
        docker(&["start", &self.pods[ordinal].container], true);
    }

    /// Deletes pod `ordinal`'s container and its volume (a pod rescheduled onto an empty disk).
    pub fn delete_with_volume(&self, ordinal: usize) {
        let p = &self.pods[ordinal];
        docker(&["rm", "-f", &p.container], true);
        docker(&["volume", "rm", "-f", &p.volume], true);
    }

    /// Runs `args` inside pod `ordinal`'s container; returns stdout.
    pub fn exec(&self, ordinal: usize, args: &[&str]) -> String {
        let mut all = vec!["exec", self.pods[ordinal].container.as_str()];
        all.extend_from_slice(args);
        docker(&all, true).1
    }

    /// Pod `ordinal`'s logs.
    pub fn logs(&self, ordinal: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.pods[ordinal].container])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Every pod's client endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        self.pods
            .iter()
            .map(Pod::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for PodSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.pods.len() {
                eprintln!("--- logs of {} ---\n{}", self.pods[i].name, self.logs(i));
            }
        }
        for p in &self.pods {
            docker(&["rm", "-f", "-v", &p.container], false);
            docker(&["volume", "rm", "-f", &p.volume], false);
        }
        docker(&["network", "rm", &self.network], false);
    }
}
