//! The Helm chart (`charts/oxcd`), the plain manifests (`deploy/`) and the alert rules, checked
//! with the real tools, offline: `helm lint --strict`; `helm template` over the values matrix in
//! `charts/oxcd/ci/*-values.yaml`, every core object validated by `kubernetes-validate --strict`
//! against Kubernetes 1.31's schemas (the Prometheus Operator's objects, which it has no schema
//! for, are checked here by structure and their rules by `promtool check rules`); the behaviour
//! users rely on, read off the rendered objects (quorum PDB, identity environment, probes,
//! restricted security context, no preStop hook); `promtool check rules` / `promtool test rules`
//! on `files/alerts.yaml`; `deploy/oxcd.yaml` against a fresh render; `docker-compose config`.
//!
//! The tools come from `scripts/install-k8s-tools.sh` (run by `make deps`); each path can be
//! overridden: `OXCD_HELM`, `OXCD_KUBERNETES_VALIDATE`, `OXCD_TOOLS_PYTHON` (a python with PyYAML,
//! which turns rendered YAML into JSON for these tests), `OXCD_PROMTOOL`, `OXCD_DOCKER_COMPOSE`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const TOOLS: &str = "/usr/local/lib/oxcd-tools";
const KUBERNETES_VERSION: &str = "1.31.0";
const RELEASE: &str = "oxcd";
const NAMESPACE: &str = "default";

fn tool(env: &str, default: &str) -> PathBuf {
    match std::env::var(env) {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(default),
    }
}

fn helm() -> PathBuf {
    tool("OXCD_HELM", &format!("{TOOLS}/bin/helm"))
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "OXCD_KUBERNETES_VALIDATE",
        &format!("{TOOLS}/bin/kubernetes-validate"),
    )
}

fn tools_python() -> PathBuf {
    tool("OXCD_TOOLS_PYTHON", &format!("{TOOLS}/venv/bin/python"))
}

fn promtool() -> PathBuf {
    tool("OXCD_PROMTOOL", "promtool")
}

fn docker_compose() -> PathBuf {
    tool("OXCD_DOCKER_COMPOSE", "docker-compose")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts/oxcd")
}

/// Runs `cmd`, panicking with its output unless it exits 0; returns its stdout.
fn run(what: &str, cmd: &mut Command) -> String {
    let out = output(what, cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn output(what: &str, cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (install the tools: scripts/install-k8s-tools.sh)")
    })
}

/// `helm template oxcd charts/oxcd --namespace default` with a values file from `ci/` and `--set`s.
fn render(values: Option<&str>, sets: &[&str]) -> String {
    let mut cmd = helm_template(values, sets);
    run(&format!("helm template ({values:?}, {sets:?})"), &mut cmd)
}

fn helm_template(values: Option<&str>, sets: &[&str]) -> Command {
    let mut cmd = Command::new(helm());
    cmd.arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("-f").arg(chart().join("ci").join(v));
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// The documents of a YAML stream, as JSON (through PyYAML; empty documents dropped).
fn parse_docs(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(tools_python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e} (scripts/install-k8s-tools.sh)",
                tools_python()
            )
        });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("python stdin");
        stdin.write_all(yaml.as_bytes()).expect("feed YAML");
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "YAML did not parse: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(v) => v,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn is_monitoring(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

fn one<'a>(docs: &'a [Value], kind_: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind(d) == kind_).collect();
    assert_eq!(found.len(), 1, "expected one {kind_}, got {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_}"))
}

/// Validates the core objects with `kubernetes-validate --strict` (Kubernetes 1.31) and checks the
/// Prometheus Operator's objects by structure; any other kind fails the test.
fn validate(label: &str, docs: &[Value]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{label}.yaml"));
    let mut stream = String::new();
    for d in docs.iter().filter(|d| !is_monitoring(d)) {
        stream.push_str("---\n");
        stream.push_str(&serde_json::to_string(d).expect("JSON"));
        stream.push('\n');
    }
    std::fs::write(&file, stream).expect("write manifests");
    let out = output(
        "kubernetes-validate",
        Command::new(kubernetes_validate())
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .arg(&file),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR") && !text.contains("WARN"),
        "{label}: kubernetes-validate --strict failed:\n{text}"
    );
    let validated = text.matches(" passed for resource ").count();
    let core = docs.iter().filter(|d| !is_monitoring(d)).count();
    assert_eq!(
        validated, core,
        "{label}: every core object validated:\n{text}"
    );
    for d in docs.iter().filter(|d| is_monitoring(d)) {
        check_monitoring(label, d);
    }
}

/// Structure of the Prometheus Operator's objects (no schema for them in kubernetes-validate).
fn check_monitoring(label: &str, d: &Value) {
    assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1", "{label}");
    assert!(!name(d).is_empty(), "{label}: {} without a name", kind(d));
    let members = member_selector();
    match kind(d) {
        "ServiceMonitor" => {
            assert_eq!(d["spec"]["selector"]["matchLabels"], members, "{label}");
            let ep = &d["spec"]["endpoints"][0];
            assert_eq!(ep["port"], "metrics", "{label}");
            assert_eq!(ep["path"], "/metrics", "{label}");
            assert_eq!(d["spec"]["namespaceSelector"]["matchNames"][0], NAMESPACE);
        }
        "PodMonitor" => {
            assert_eq!(d["spec"]["selector"]["matchLabels"], members, "{label}");
            let ep = &d["spec"]["podMetricsEndpoints"][0];
            assert_eq!(ep["port"], "metrics", "{label}");
            assert_eq!(ep["path"], "/metrics", "{label}");
        }
        "PrometheusRule" => {
            let groups = d["spec"]["groups"].as_array().expect("spec.groups");
            assert!(!groups.is_empty(), "{label}: PrometheusRule without groups");
            for g in groups {
                assert!(g["name"].is_string(), "{label}: group without a name");
                for r in g["rules"].as_array().expect("rules") {
                    assert!(
                        r["alert"].is_string() || r["record"].is_string(),
                        "{label}: rule {r}"
                    );
                    assert!(r["expr"].is_string(), "{label}: rule without expr {r}");
                }
            }
        }
        other => panic!("{label}: unexpected kind {other} in monitoring.coreos.com"),
    }
}

fn member_selector() -> Value {
    serde_json::json!({
        "app.kubernetes.io/name": "oxcd",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "member",
    })
}

/// What a values file of the matrix turns on.
struct Case {
    file: &'static str,
    replicas: u64,
    client_tls: bool,
    peer_tls: bool,
    auth: bool,
}

impl Case {
    /// A values file with this many members, TLS for clients and peers or neither, auth or not.
    const fn new(file: &'static str, replicas: u64, tls: bool, auth: bool) -> Case {
        Case {
            file,
            replicas,
            client_tls: tls,
            peer_tls: tls,
            auth,
        }
    }
}

const MATRIX: &[Case] = &[
    Case::new("default-values.yaml", 3, false, false),
    Case::new("single-values.yaml", 1, false, false),
    Case::new("five-values.yaml", 5, false, false),
    Case::new("tls-values.yaml", 3, true, false),
    Case::new("autotls-values.yaml", 3, true, false),
    Case::new("auth-values.yaml", 3, false, true),
    Case::new("auth-existing-secret-values.yaml", 3, false, true),
    Case::new("metrics-values.yaml", 3, false, false),
    Case::new("backup-values.yaml", 3, false, false),
];

fn case(file: &str) -> &'static Case {
    MATRIX
        .iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("no case for {file}"))
}

fn ci_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/oxcd/ci")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with("-values.yaml"))
        .collect();
    files.sort();
    files
}

/// The pod spec of a workload (StatefulSet, CronJob or Pod).
fn pod_spec(doc: &Value) -> &Value {
    match kind(doc) {
        "StatefulSet" | "Deployment" | "Job" => &doc["spec"]["template"]["spec"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "Pod" => &doc["spec"],
        other => panic!("{other} has no pod spec"),
    }
}

fn containers(spec: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec[key].as_array() {
            all.extend(list.iter());
        }
    }
    all
}

/// A container's environment: name to the EnvVar (with `value` or `valueFrom`).
fn env(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| (e["name"].as_str().expect("env name").to_string(), e.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value<'a>(env: &'a BTreeMap<String, Value>, key: &str) -> &'a str {
    env.get(key)
        .unwrap_or_else(|| panic!("{key} missing from the environment"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{key} has no literal value"))
}

fn member_container(docs: &[Value]) -> &Value {
    let sts = one(docs, "StatefulSet");
    pod_spec(sts)["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "oxcd")
        .expect("container oxcd")
}

fn quorum(replicas: u64) -> u64 {
    replicas / 2 + 1
}

/// The behaviour every rendering must keep, whatever the values.
fn check_invariants(label: &str, text: &str, docs: &[Value], c: &Case) {
    // No hook that removes a member when its pod stops (bitnami/charts#5443 and friends).
    assert!(!text.contains("preStop"), "{label}: a preStop hook");

    let sts = one(docs, "StatefulSet");
    assert_eq!(name(sts), "oxcd", "{label}");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "{label}");
    assert_eq!(sts["spec"]["serviceName"], "oxcd-headless", "{label}");
    assert_eq!(sts["spec"]["replicas"], c.replicas, "{label}");
    assert_eq!(sts["spec"]["selector"]["matchLabels"], member_selector());
    let spec = pod_spec(sts);
    // Long enough for an unwanted member to hand off leadership and leave on SIGTERM.
    assert_eq!(spec["terminationGracePeriodSeconds"], 60, "{label}");
    assert_eq!(
        spec["enableServiceLinks"], false,
        "{label}: service env links"
    );
    let vct = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(vct["metadata"]["name"], "data", "{label}");
    assert_eq!(
        vct["metadata"]["labels"],
        member_selector(),
        "{label}: volumeClaimTemplates carry only labels that never change"
    );

    let headless = named(docs, "Service", "oxcd-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None", "{label}");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "{label}"
    );
    let ports: Vec<(&str, u64)> = headless["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [("client", 2379), ("peer", 2380), ("metrics", 2381)],
        "{label}"
    );
    let client = named(docs, "Service", "oxcd");
    assert_ne!(client["spec"]["clusterIP"], "None", "{label}");
    assert_eq!(client["spec"]["selector"], member_selector(), "{label}");
    assert_eq!(headless["spec"]["selector"], member_selector(), "{label}");

    let pdb = one(docs, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["minAvailable"],
        quorum(c.replicas),
        "{label}: PDB keeps quorum"
    );
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], member_selector());

    // Probes on the metrics port: liveness /livez (generous), readiness and startup /readyz.
    let m = member_container(docs);
    let metrics_port = m["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("metrics port");
    assert_eq!(metrics_port["containerPort"], 2381, "{label}");
    for (probe, path) in [
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ] {
        let get = &m[probe]["httpGet"];
        assert_eq!(get["path"], path, "{label}: {probe}");
        assert_eq!(get["port"], "metrics", "{label}: {probe}");
        assert_eq!(get["scheme"], "HTTP", "{label}: {probe}");
    }
    let budget = |p: &str| {
        m[p]["periodSeconds"].as_u64().unwrap() * m[p]["failureThreshold"].as_u64().unwrap()
    };
    assert!(budget("startupProbe") >= 600, "{label}: startup budget");
    assert!(
        budget("livenessProbe") >= 60,
        "{label}: liveness is generous"
    );

    // Every container of every pod is restricted and has a writable /tmp.
    for d in docs
        .iter()
        .filter(|d| matches!(kind(d), "StatefulSet" | "CronJob" | "Pod"))
    {
        let spec = pod_spec(d);
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{label}: {}", name(d));
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{label}");
        assert_eq!(psc["fsGroup"], 10001, "{label}");
        let tmp_volumes: Vec<&str> = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["emptyDir"].is_object())
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for ctr in containers(spec) {
            let who = format!("{label}: {}/{}", name(d), ctr["name"]);
            let sc = &ctr["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["runAsUser"], 10001, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{who}"
            );
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
            assert!(sc["capabilities"]["add"].is_null(), "{who}");
            let tmp = ctr["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|v| v["mountPath"] == "/tmp")
                .unwrap_or_else(|| panic!("{who}: no /tmp"));
            assert!(
                tmp_volumes.contains(&tmp["name"].as_str().unwrap()),
                "{who}: /tmp is an emptyDir"
            );
        }
    }

    check_identity_env(label, m, c);

    // Standard labels on every object.
    for d in docs {
        let labels = &d["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(
                labels[key].is_string(),
                "{label}: {} {} lacks {key}",
                kind(d),
                name(d)
            );
        }
    }
}

/// The environment contract between the chart and the server.
fn check_identity_env(label: &str, m: &Value, c: &Case) {
    let env = env(m);
    let field = |k: &str| env[k]["valueFrom"]["fieldRef"]["fieldPath"].clone();
    assert_eq!(field("OXCD_POD_NAME"), "metadata.name", "{label}");
    assert_eq!(field("OXCD_POD_NAMESPACE"), "metadata.namespace", "{label}");
    let client = if c.client_tls { "https" } else { "http" };
    let peer = if c.peer_tls { "https" } else { "http" };
    let replicas = c.replicas.to_string();
    for (k, v) in [
        ("OXCD_STATEFULSET", "oxcd"),
        ("OXCD_HEADLESS_SERVICE", "oxcd-headless"),
        ("OXCD_CLUSTER_DOMAIN", "cluster.local"),
        ("OXCD_RELEASE", RELEASE),
        ("OXCD_REPLICAS", replicas.as_str()),
        ("OXCD_CLIENT_SCHEME", client),
        ("OXCD_PEER_SCHEME", peer),
        ("OXCD_CLIENT_PORT", "2379"),
        ("OXCD_PEER_PORT", "2380"),
        ("ETCD_DATA_DIR", "/var/lib/oxcd/data"),
        (
            "ETCD_LISTEN_CLIENT_URLS",
            &format!("{client}://0.0.0.0:2379"),
        ),
        ("ETCD_LISTEN_PEER_URLS", &format!("{peer}://0.0.0.0:2380")),
        ("ETCD_LISTEN_METRICS_URLS", "http://0.0.0.0:2381"),
        ("ETCD_QUOTA_BACKEND_BYTES", "8589934592"),
        ("ETCD_AUTO_COMPACTION_MODE", "periodic"),
        ("ETCD_AUTO_COMPACTION_RETENTION", "1h"),
        ("ETCD_SNAPSHOT_COUNT", "10000"),
        ("ETCD_LOG_LEVEL", "info"),
    ] {
        assert_eq!(env_value(&env, k), v, "{label}: {k}");
    }
    // The server derives these from the pod; the chart must not pin them.
    for k in [
        "ETCD_NAME",
        "ETCD_ADVERTISE_CLIENT_URLS",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        "ETCD_INITIAL_CLUSTER",
        "ETCD_INITIAL_CLUSTER_STATE",
        "ETCD_INITIAL_CLUSTER_TOKEN",
    ] {
        assert!(!env.contains_key(k), "{label}: {k} is set");
    }
    if c.auth {
        let key = &env
            .get("OXCD_ROOT_PASSWORD")
            .unwrap_or_else(|| panic!("{label}: OXCD_ROOT_PASSWORD missing"))["valueFrom"]
            ["secretKeyRef"];
        assert!(key["name"].is_string() && key["key"].is_string(), "{label}");
    } else {
        assert!(!env.contains_key("OXCD_ROOT_PASSWORD"), "{label}");
    }
    if !c.client_tls {
        for k in ["ETCD_CERT_FILE", "ETCD_AUTO_TLS", "ETCD_CLIENT_CERT_AUTH"] {
            assert!(!env.contains_key(k), "{label}: {k} without client TLS");
        }
    }
    if !c.peer_tls {
        for k in ["ETCD_PEER_CERT_FILE", "ETCD_PEER_AUTO_TLS"] {
            assert!(!env.contains_key(k), "{label}: {k} without peer TLS");
        }
    }
}

#[test]
fn helm_lint_strict_passes_with_defaults_and_every_ci_values_file() {
    let mut runs: Vec<Option<String>> = vec![None];
    runs.extend(ci_files().into_iter().map(Some));
    for values in runs {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", "--strict"]).arg(chart());
        if let Some(v) = &values {
            cmd.arg("-f").arg(chart().join("ci").join(v));
        }
        let out = run(&format!("helm lint --strict ({values:?})"), &mut cmd);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn every_values_file_renders_valid_kubernetes_1_31_objects_that_keep_the_invariants() {
    let files = ci_files();
    for f in &files {
        let _ = case(f); // every file of ci/ is in the matrix, and the other way round
    }
    assert_eq!(files.len(), MATRIX.len(), "{files:?}");
    for c in MATRIX {
        let text = render(Some(c.file), &[]);
        let docs = parse_docs(&text);
        validate(c.file, &docs);
        check_invariants(c.file, &text, &docs, c);
    }
    // The defaults without any values file.
    let text = render(None, &[]);
    let docs = parse_docs(&text);
    validate("defaults", &docs);
    check_invariants("defaults", &text, &docs, case("default-values.yaml"));
}

#[test]
fn pdb_keeps_quorum_for_one_three_and_five_members() {
    for (replicas, min) in [(1u64, 1u64), (3, 2), (5, 3), (7, 4)] {
        let docs = parse_docs(&render(None, &[&format!("replicaCount={replicas}")]));
        let pdb = one(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"]["minAvailable"], min, "{replicas} members");
        assert!(pdb["spec"]["maxUnavailable"].is_null());
        assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
        let m = member_container(&docs);
        assert_eq!(env_value(&env(m), "OXCD_REPLICAS"), replicas.to_string());
    }
    // An explicit budget wins.
    let docs = parse_docs(&render(None, &["pdb.maxUnavailable=1"]));
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"]["minAvailable"].is_null());
}

#[test]
fn tls_values_switch_schemes_and_point_etcd_at_the_certificates() {
    let docs = parse_docs(&render(Some("tls-values.yaml"), &[]));
    let m = member_container(&docs);
    let e = env(m);
    for (k, v) in [
        ("ETCD_CERT_FILE", "/etc/oxcd/tls/client/tls.crt"),
        ("ETCD_KEY_FILE", "/etc/oxcd/tls/client/tls.key"),
        ("ETCD_TRUSTED_CA_FILE", "/etc/oxcd/tls/client/ca.crt"),
        ("ETCD_CLIENT_CERT_AUTH", "true"),
        ("ETCD_PEER_CERT_FILE", "/etc/oxcd/tls/peer/tls.crt"),
        ("ETCD_PEER_KEY_FILE", "/etc/oxcd/tls/peer/tls.key"),
        ("ETCD_PEER_TRUSTED_CA_FILE", "/etc/oxcd/tls/peer/ca.crt"),
        ("ETCD_PEER_CLIENT_CERT_AUTH", "true"),
    ] {
        assert_eq!(env_value(&e, k), v, "{k}");
    }
    assert!(!e.contains_key("ETCD_AUTO_TLS") && !e.contains_key("ETCD_PEER_AUTO_TLS"));
    let spec = pod_spec(one(&docs, "StatefulSet"));
    let secrets: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["oxcd-client-tls", "oxcd-peer-tls"]);
    // The helm test verifies the server against the CA and presents the client certificate.
    let test = one(&docs, "Pod");
    let args = &pod_spec(test)["containers"][0]["args"];
    assert_eq!(
        args,
        &serde_json::json!([
            "endpoint",
            "health",
            "--endpoints=https://oxcd.default.svc.cluster.local:2379",
            "--cacert=/etc/oxcd/tls/client/ca.crt",
            "--cert=/etc/oxcd/tls/client/tls.crt",
            "--key=/etc/oxcd/tls/client/tls.key"
        ])
    );

    let docs = parse_docs(&render(Some("autotls-values.yaml"), &[]));
    let e = env(member_container(&docs));
    assert_eq!(env_value(&e, "ETCD_AUTO_TLS"), "true");
    assert_eq!(env_value(&e, "ETCD_PEER_AUTO_TLS"), "true");
    assert_eq!(env_value(&e, "ETCD_CLIENT_CERT_AUTH"), "false");
    assert!(!e.contains_key("ETCD_CERT_FILE") && !e.contains_key("ETCD_PEER_CERT_FILE"));
    let args = &pod_spec(one(&docs, "Pod"))["containers"][0]["args"];
    assert!(args
        .as_array()
        .unwrap()
        .contains(&Value::from("--insecure-skip-tls-verify")));
}

#[test]
fn auth_takes_the_root_password_from_a_secret_and_defaults_render_none() {
    // Defaults: no random password anywhere, so deploy/oxcd.yaml is reproducible.
    let docs = parse_docs(&render(None, &[]));
    assert!(docs.iter().all(|d| kind(d) != "Secret"));
    assert_eq!(
        env_value(&env(member_container(&docs)), "ETCD_AUTH_TOKEN"),
        "simple"
    );

    let docs = parse_docs(&render(Some("auth-values.yaml"), &[]));
    let secret = one(&docs, "Secret");
    assert_eq!(name(secret), "oxcd");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        secret["data"]["root-password"], "Y2ktcm9vdC1wYXNzd29yZA==",
        "base64 of ci-root-password"
    );
    let e = env(member_container(&docs));
    assert_eq!(
        e["OXCD_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "oxcd", "key": "root-password"})
    );
    // Every pod that talks to the cluster gets it: the helm test too.
    let test = env(&pod_spec(one(&docs, "Pod"))["containers"][0]);
    assert_eq!(test["OXCD_ROOT_PASSWORD"], e["OXCD_ROOT_PASSWORD"]);

    // A generated password (no rootPassword) is random, so it is only checked for shape.
    let docs = parse_docs(&render(None, &["auth.rbac.create=true"]));
    let secret = one(&docs, "Secret");
    assert!(secret["data"]["root-password"].as_str().unwrap().len() >= 24);

    let docs = parse_docs(&render(Some("auth-existing-secret-values.yaml"), &[]));
    assert!(docs.iter().all(|d| kind(d) != "Secret"));
    let e = env(member_container(&docs));
    assert_eq!(
        e["OXCD_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "oxcd-root", "key": "password"})
    );
    assert_eq!(
        env_value(&e, "ETCD_AUTH_TOKEN"),
        "jwt,pub-key=/etc/oxcd/jwt/jwt-token.pub,priv-key=/etc/oxcd/jwt/jwt-token.pem,\
         sign-method=RS256,ttl=10m"
    );
}

#[test]
fn the_controller_switch_picks_update_strategy_rbac_and_environment() {
    // Default: the controller rolls upgrades itself, so Kubernetes must not (OnDelete), and its
    // Role allows exactly what it does: read its own StatefulSet, read and delete its pods,
    // write Events. No Leases: the raft leader is the one controller that acts.
    let docs = parse_docs(&render(None, &[]));
    let sts = one(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(pod_spec(sts)["automountServiceAccountToken"], true);
    let e = env(member_container(&docs));
    assert_eq!(env_value(&e, "OXCD_CONTROLLER"), "true");
    assert!(!e.contains_key("OXCD_CONTROLLER_INTERVAL"));
    let role = one(&docs, "Role");
    let rules: Vec<(String, String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let group = r["apiGroups"][0].as_str().unwrap().to_string();
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |res| {
                    (
                        group.clone(),
                        res.as_str().unwrap().to_string(),
                        verbs.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let verbs = |g: &str, r: &str| -> Vec<String> {
        rules
            .iter()
            .find(|(gg, rr, _)| gg == g && rr == r)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(verbs("apps", "statefulsets"), ["get", "list", "watch"]);
    assert_eq!(verbs("", "pods"), ["get", "list", "watch", "delete"]);
    assert!(verbs("", "events").contains(&"create".to_string()));
    assert!(
        rules
            .iter()
            .all(|(_, r, _)| r != "leases" && r != "secrets" && r != "statefulsets/scale"),
        "{rules:?}"
    );
    let binding = one(&docs, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], name(role));
    assert_eq!(
        binding["subjects"][0]["name"],
        name(one(&docs, "ServiceAccount"))
    );

    // Off: members promote themselves, Kubernetes rolls upgrades, no Role at all.
    let docs = parse_docs(&render(None, &["controller.enabled=false"]));
    let sts = one(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        env_value(&env(member_container(&docs)), "OXCD_CONTROLLER"),
        "false"
    );
    assert!(docs
        .iter()
        .all(|d| kind(d) != "Role" && kind(d) != "RoleBinding"));

    // An explicit strategy wins; an interval reaches the members.
    let docs = parse_docs(&render(
        None,
        &["updateStrategy.type=RollingUpdate", "controller.interval=2"],
    ));
    assert_eq!(
        one(&docs, "StatefulSet")["spec"]["updateStrategy"]["type"],
        "RollingUpdate"
    );
    assert_eq!(
        env_value(&env(member_container(&docs)), "OXCD_CONTROLLER_INTERVAL"),
        "2"
    );

    // The controller reads Kubernetes with the pod's token: refusing to render without one.
    let out = output(
        "helm template",
        &mut helm_template(None, &["serviceAccount.automountServiceAccountToken=false"]),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("automountServiceAccountToken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn invalid_values_are_refused_at_render_time() {
    for (sets, why) in [
        (&["replicaCunt=3"][..], "Additional property replicaCunt"),
        (&["auth.rbac.creat=true"][..], "Additional property creat"),
        (&["persistence.size=10GB"][..], "persistence.size"),
        (
            &["auth.client.secureTransport=true"][..],
            "auth.client.existingSecret",
        ),
        (
            &[
                "auth.peer.secureTransport=true",
                "auth.peer.existingSecret=p",
            ][..],
            "auth.peer.caFilename",
        ),
        (
            &["auth.token.type=jwt"][..],
            "auth.token.privateKey.existingSecret",
        ),
        (
            &["startFromSnapshot.enabled=true"][..],
            "startFromSnapshot.existingClaim",
        ),
        (&["controller.interval=5m"][..], "controller.interval"),
    ] {
        let out = output("helm template", &mut helm_template(None, sets));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(err.contains(why), "{sets:?}: {err}");
    }
}

#[test]
fn monitoring_objects_scrape_members_and_carry_etcds_alerts() {
    let text = render(Some("metrics-values.yaml"), &[]);
    let docs = parse_docs(&text);
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let pm = one(&docs, "PodMonitor");
    assert_eq!(pm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let sts = one(&docs, "StatefulSet");
    let pod_annotations = &sts["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(pod_annotations["prometheus.io/scrape"], "true");
    assert_eq!(pod_annotations["prometheus.io/port"], "2381");
    // The ServiceMonitor selects only the headless Service (which lists not-ready members).
    let selected: Vec<&str> = docs
        .iter()
        .filter(|d| kind(d) == "Service")
        .filter(|d| {
            let labels = &d["metadata"]["labels"];
            sm["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &labels[k] == v)
        })
        .map(name)
        .collect();
    assert_eq!(selected, ["oxcd-headless"]);

    let rule = one(&docs, "PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().unwrap();
    let alerts: Vec<(&str, &str)> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| Some((r["alert"].as_str()?, r["labels"]["severity"].as_str()?)))
        .collect();
    for expected in [
        ("etcdMembersDown", "critical"),
        ("etcdInsufficientMembers", "critical"),
        ("etcdNoLeader", "critical"),
        ("etcdHighNumberOfLeaderChanges", "warning"),
        ("etcdHighNumberOfFailedGRPCRequests", "warning"),
        ("etcdHighNumberOfFailedGRPCRequests", "critical"),
        ("etcdGRPCRequestsSlow", "critical"),
        ("etcdHighFsyncDurations", "warning"),
        ("etcdHighFsyncDurations", "critical"),
        ("etcdHighCommitDurations", "warning"),
        ("etcdDatabaseQuotaLowSpace", "critical"),
        ("etcdExcessiveDatabaseGrowth", "warning"),
        ("etcdDatabaseHighFragmentationRatio", "warning"),
        ("oxcdLearnerPresent", "info"),
    ] {
        assert!(
            alerts.contains(&expected),
            "{expected:?} missing: {alerts:?}"
        );
    }
    // The configured selector replaced the default one in every shipped expression.
    for r in groups[0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"namespace="default", job=~".*oxcd.*""#),
            "selector not applied: {expr}"
        );
    }
    // The rendered groups are a valid Prometheus rules file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered-rules.json");
    std::fs::write(
        &file,
        serde_json::to_string(&serde_json::json!({ "groups": groups })).unwrap(),
    )
    .unwrap();
    run(
        "promtool check rules (rendered PrometheusRule)",
        Command::new(promtool()).args(["check", "rules"]).arg(&file),
    );

    // Off by default.
    let docs = parse_docs(&render(None, &[]));
    assert!(docs.iter().all(|d| !is_monitoring(d)));
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let files = chart().join("files");
    let out = run(
        "promtool check rules files/alerts.yaml",
        Command::new(promtool())
            .args(["check", "rules"])
            .arg(files.join("alerts.yaml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(
        "promtool test rules files/alerts.test.yaml",
        Command::new(promtool())
            .args(["test", "rules", "alerts.test.yaml"])
            .current_dir(&files),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn backup_cronjob_and_restore_from_snapshot() {
    let docs = parse_docs(&render(Some("backup-values.yaml"), &[]));
    let cj = one(&docs, "CronJob");
    assert_eq!(cj["spec"]["schedule"], "*/30 * * * *");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
    let spec = pod_spec(cj);
    let ctr = &spec["containers"][0];
    assert_eq!(ctr["command"], serde_json::json!(["/bin/sh", "-ec"]));
    let backup_script = ctr["args"][0].as_str().unwrap();
    assert!(
        backup_script.contains(
            "oxcd snapshot save \"$dir/.$name.part\" \
             --endpoints=http://oxcd.default.svc.cluster.local:2379"
        ),
        "{backup_script}"
    );
    assert!(backup_script.contains("keep=5"), "{backup_script}");
    let claim = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .unwrap();
    assert_eq!(claim, "oxcd-snapshotter");
    let pvc = named(&docs, "PersistentVolumeClaim", "oxcd-snapshotter");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    // The restore runs before oxcd, only on ordinal 0 without data, as etcd's restore does.
    let sts = one(&docs, "StatefulSet");
    let init = &pod_spec(sts)["initContainers"][0];
    assert_eq!(init["name"], "restore-snapshot");
    let script = init["args"][0].as_str().unwrap();
    for needle in [
        r#"ordinal="${OXCD_POD_NAME##*-}""#,
        r#"if [ -e "$data/member" ]"#,
        r#"oxcd snapshot restore "/snapshots/${SNAPSHOT_FILENAME}""#,
        r#"--name "$OXCD_POD_NAME""#,
        r#"--initial-cluster "${OXCD_POD_NAME}=${peer}""#,
        r#"--initial-cluster-token "${OXCD_RELEASE}-${OXCD_POD_NAMESPACE}""#,
        r#"--initial-advertise-peer-urls "$peer""#,
        r#"peer="${OXCD_PEER_SCHEME}://${OXCD_POD_NAME}.${OXCD_HEADLESS_SERVICE}.${OXCD_POD_NAMESPACE}.svc.${OXCD_CLUSTER_DOMAIN}:${OXCD_PEER_PORT}""#,
    ] {
        assert!(script.contains(needle), "{needle} not in:\n{script}");
    }
    assert_eq!(
        env_value(&env(init), "SNAPSHOT_FILENAME"),
        "db-20250101-000000"
    );
    let mounts = init["volumeMounts"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/var/lib/oxcd" && m["name"] == "data"));
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/snapshots" && m["readOnly"] == true));

    // Both scripts are valid shell.
    for script in [backup_script, script] {
        let out = output("sh -n", Command::new("sh").args(["-n", "-c", script]));
        assert!(
            out.status.success(),
            "{}:\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn deploy_manifests_equal_a_fresh_render_with_default_values() {
    let path = repo().join("deploy/oxcd.yaml");
    let file = std::fs::read_to_string(&path).expect("deploy/oxcd.yaml");
    let body = file
        .find("\n---\n")
        .map(|i| &file[i + 1..])
        .expect("deploy/oxcd.yaml has a header and documents");
    let mut cmd = helm_template(None, &[]);
    cmd.arg("--skip-tests");
    let fresh = run("helm template --skip-tests", &mut cmd);
    assert!(
        body == fresh,
        "deploy/oxcd.yaml is stale: run scripts/render-deploy.sh"
    );
    let docs = parse_docs(body);
    validate("deploy", &docs);
    assert!(docs.iter().all(|d| kind(d) != "Pod"), "no helm test Pod");
}

#[test]
fn docker_compose_file_is_valid_and_gives_the_chart_environment() {
    let file = repo().join("deploy/docker-compose.yaml");
    run(
        "docker-compose config -q",
        Command::new(docker_compose())
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"]),
    );
    let config = run(
        "docker-compose config",
        Command::new(docker_compose())
            .arg("-f")
            .arg(&file)
            .arg("config"),
    );
    let compose = parse_docs(&config).remove(0);
    let chart_env = env(member_container(&parse_docs(&render(None, &[]))));
    for (n, port) in [(0, 2379), (1, 22379), (2, 32379)] {
        let svc = &compose["services"][format!("oxcd-{n}")];
        assert_eq!(svc["image"], "oxcd:0.1.0");
        assert_eq!(svc["hostname"], format!("oxcd-{n}"));
        let aliases = &svc["networks"]["oxcd"]["aliases"];
        assert!(
            aliases.as_array().unwrap().contains(&Value::from(format!(
                "oxcd-{n}.oxcd-headless.default.svc.cluster.local"
            ))),
            "{aliases}"
        );
        let ports = svc["ports"].as_array().unwrap();
        assert!(
            ports.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("127.0.0.1:{port}:2379")))),
            "{ports:?}"
        );
        let volumes = svc["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("oxcd-{n}-data:/var/lib/oxcd")))));
        // Exactly the chart's environment, the downward API's values filled in.
        let env = svc["environment"].as_object().unwrap();
        let mut expected: BTreeMap<String, String> = chart_env
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v["value"].as_str()?.to_string())))
            .collect();
        expected.insert("OXCD_POD_NAME".into(), format!("oxcd-{n}"));
        expected.insert("OXCD_POD_NAMESPACE".into(), NAMESPACE.into());
        // The one difference: no Kubernetes API on a Docker host, so no membership controller.
        assert_eq!(
            expected.get("OXCD_CONTROLLER").map(String::as_str),
            Some("true")
        );
        expected.insert("OXCD_CONTROLLER".into(), "false".into());
        let got: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), String::from),
                )
            })
            .collect();
        assert_eq!(got, expected, "oxcd-{n}");
    }
}
