//! Operating oxcd with the tools operators have: `curl` on `/metrics`, `/health`, `/livez` and
//! `/readyz`, `promtool check metrics`, `grpc.health.v1`, and the space quota with the real
//! `etcdctl`.

use std::collections::BTreeMap;
use std::process::Command;

use crate::harness::*;

/// The result of one `curl` call: HTTP status, Content-Type and body.
#[derive(Debug, Clone)]
pub struct Http {
    /// The status code.
    pub status: u16,
    /// The Content-Type header (empty if none).
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// Runs the real `curl` with `args` against `url` and returns the response.
pub fn curl(url: &str, args: &[&str]) -> Http {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, meta) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let (status, content_type) = meta.split_once(' ').unwrap_or((meta, ""));
    Http {
        status: status.parse().unwrap_or(0),
        content_type: content_type.to_string(),
        body: body.to_string(),
    }
}

/// GETs `path` on the member at `endpoint`.
pub fn get(endpoint: &str, path: &str) -> Http {
    curl(&format!("http://{endpoint}{path}"), &[])
}

/// The samples of a Prometheus text exposition, by series (name and labels as printed).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn scrape(endpoint: &str) -> BTreeMap<String, f64> {
    let r = get(endpoint, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    samples(&r.body)
}

pub fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn grpc(kind: &str, method: &str, service: &str) -> String {
    format!(
        "{{grpc_method=\"{method}\",grpc_service=\"etcdserverpb.{service}\",grpc_type=\"{kind}\"}}"
    )
}

pub fn handled(method: &str, service: &str, code: &str) -> String {
    format!(
        "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"etcdserverpb.{service}\",grpc_type=\"unary\"}}"
    )
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_a_known_load() {
    let metrics_port = free_port();
    let listen = format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}");
    let c = Cluster::start_with(Kind::Oxcd, 1, &[&listen]).await;
    let ep = c.members[0].endpoint();
    let mut client = c.client().await;

    let r = get(&ep, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (apt-get install prometheus)");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("promtool stdin");
        stdin.write_all(r.body.as_bytes()).expect("feed promtool");
    }
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = samples(&r.body);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_server_quota_backend_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(before.contains_key(name), "/metrics lacks {name}");
    }
    assert_eq!(value(&before, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&before, "etcd_server_is_leader"), 1.0);
    assert!(value(&before, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert_eq!(
        value(&before, "etcd_server_quota_backend_bytes"),
        2.0 * 1024.0 * 1024.0 * 1024.0
    );

    // A known load: 25 puts, 3 ranges, one range at a compacted revision, one lease.
    for i in 0..25 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    for _ in 0..3 {
        client.get("k1", None).await.expect("get");
    }
    client.compact(10, None).await.expect("compact");
    let old = etcd_client::GetOptions::new().with_revision(2);
    assert!(client.get("k1", Some(old)).await.is_err());
    client.lease_grant(60, None).await.expect("grant");

    let after = scrape(&ep);
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta(&handled("Put", "KV", "OK")), 25.0);
    assert_eq!(
        delta(&format!(
            "grpc_server_started_total{}",
            grpc("unary", "Put", "KV")
        )),
        25.0
    );
    assert_eq!(
        delta(&format!(
            "grpc_server_msg_received_total{}",
            grpc("unary", "Put", "KV")
        )),
        25.0
    );
    assert_eq!(delta(&handled("Range", "KV", "OK")), 3.0);
    assert_eq!(delta(&handled("Range", "KV", "OutOfRange")), 1.0);
    assert_eq!(delta("etcd_debugging_lease_granted_total"), 1.0);
    assert!(delta("etcd_server_proposals_committed_total") >= 27.0);
    assert!(delta("etcd_server_proposals_applied_total") >= 27.0);
    assert!(delta("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(delta("etcd_disk_backend_commit_duration_seconds_count") >= 27.0);
    assert!(delta("etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(delta("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    assert_eq!(value(&after, "etcd_debugging_mvcc_current_revision"), 26.0);
    assert_eq!(value(&after, "etcd_debugging_mvcc_compact_revision"), 10.0);
    // What RocksDB holds in memory, from its own counters.
    assert!(value(&after, "oxcd_storage_memtable_bytes{cf=\"kv\"}") > 0.0);
    assert!(value(&after, "oxcd_storage_memtable_bytes{cf=\"raft_log\"}") > 0.0);
    assert!(after.contains_key("oxcd_storage_block_cache_bytes"));
    assert!(after.contains_key("oxcd_storage_table_readers_bytes"));

    // The metrics listener serves /metrics and the probes, not the API.
    let mep = format!("127.0.0.1:{metrics_port}");
    let m = scrape(&mep);
    assert_eq!(value(&m, "etcd_server_has_leader"), 1.0);
    assert_eq!(get(&mep, "/readyz").body, "ok");
    assert_eq!(get(&mep, "/v3/kv/range").status, 404);
}

#[tokio::test]
async fn a_member_cut_off_from_its_peers_is_live_but_not_ready() {
    let mut c = Cluster::start(3).await;
    // The leader is the one cut off: it must notice it lost its quorum (etcd's CheckQuorum).
    let cut = c.wait_leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    let ep = c.members[cut].endpoint();
    assert_eq!(get(&ep, "/livez").body, "ok");
    assert_eq!(get(&ep, "/readyz").body, "ok");
    let h = get(&ep, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let v = get(&ep, "/readyz?verbose");
    assert_eq!(
        v.body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nreadyz check passed\n"
    );
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(c.members[cut].channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("grpc health check")
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The leader measures its round trips to each peer and counts the bytes it sends them.
    let lep = ep.clone();
    wait_until("the leader's peer round-trip histograms", WAIT, || {
        let lep = lep.clone();
        async move {
            let m = scrape(&lep);
            let rtt = m
                .iter()
                .filter(|(k, v)| {
                    k.starts_with("etcd_network_peer_round_trip_time_seconds_count{To=")
                        && **v > 0.0
                })
                .count();
            let sent = m
                .iter()
                .filter(|(k, v)| {
                    k.starts_with("etcd_network_peer_sent_bytes_total{To=") && **v > 0.0
                })
                .count();
            rtt == 2 && sent == 2
        }
    })
    .await;

    // Cut the leader off: the other two go away.
    for &i in &others {
        c.members[i].kill();
    }
    wait_until("the cut-off leader to report no leader", WAIT, || {
        let ep = ep.clone();
        async move { value(&scrape(&ep), "etcd_server_has_leader") == 0.0 }
    })
    .await;
    let live = get(&ep, "/livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    let ready = get(&ep, "/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body.contains("[-]linearizable_read failed: "),
        "{ready:?}"
    );
    assert!(ready.body.ends_with("readyz check failed\n"), "{ready:?}");
    let excluded = get(&ep, "/readyz?exclude=linearizable_read");
    assert_eq!(excluded.status, 200, "{excluded:?}");
    assert_eq!(get(&ep, "/readyz/serializable_read").status, 200);
    assert_eq!(get(&ep, "/readyz/linearizable_read").status, 503);
    let h = get(&ep, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#)
    );
    assert_eq!(get(&ep, "/health?serializable=true").status, 200);
    wait_until("grpc health to report NOT_SERVING", WAIT, || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
                })
        }
    })
    .await;

    // The peers come back: a leader again, ready again.
    for &i in &others {
        c.members[i].start();
    }
    // (They may hold an election first: wait until the cluster has settled.)
    wait_until(
        "the member to be ready, healthy and led again",
        WAIT,
        || {
            let ep = ep.clone();
            async move {
                get(&ep, "/readyz").status == 200
                    && get(&ep, "/health").status == 200
                    && value(&scrape(&ep), "etcd_server_has_leader") == 1.0
            }
        },
    )
    .await;
    let post = curl(&format!("http://{ep}/health"), &["-X", "POST"]);
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn writes_past_the_quota_raise_nospace_until_compact_defrag_and_disarm() {
    let c = Cluster::start_with(Kind::Oxcd, 1, &["--quota-backend-bytes=1048576"]).await;
    let ep = c.members[0].endpoint();
    let value = "x".repeat(64 * 1024);
    let mut refused = None;
    for i in 0..64 {
        let out = etcdctl(&ep, &["put", &format!("big{i}"), &value]);
        if !out.ok {
            refused = Some(out);
            break;
        }
    }
    let refused = refused.expect("a put past the 1 MiB quota is refused");
    assert_eq!(
        error_line(&refused),
        "Error: etcdserver: mvcc: database space exceeded"
    );
    let alarms = etcdctl(&ep, &["alarm", "list"]);
    assert!(
        alarms.stdout.starts_with("memberID:")
            && alarms.stdout.trim_end().ends_with("alarm:NOSPACE"),
        "{alarms:?}"
    );
    let h = get(&ep, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (503, r#"{"health":"false","reason":"ALARM NOSPACE"}"#)
    );
    assert_eq!(get(&ep, "/health?exclude=NOSPACE").status, 200);
    // Small writes and lease grants are refused too; reads and deletes are not.
    assert_eq!(
        error_line(&etcdctl(&ep, &["put", "small", "v"])),
        "Error: etcdserver: mvcc: database space exceeded"
    );
    assert_eq!(
        error_line(&etcdctl(&ep, &["lease", "grant", "60"])),
        "Error: failed to grant lease (etcdserver: mvcc: database space exceeded)"
    );
    assert!(etcdctl(&ep, &["get", "big0", "--keys-only"]).ok);
    let del = etcdctl(&ep, &["del", "--prefix", "big"]);
    assert!(del.ok, "{del:?}");
    // Disarming alone does not help while the space is still taken: compact and defrag first.
    let rev = etcdctl(&ep, &["get", "x", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev.stdout).expect("json");
    let rev = rev["header"]["revision"].as_i64().expect("revision");
    assert!(etcdctl(&ep, &["compact", &rev.to_string()]).ok);
    let defrag = etcdctl(&ep, &["defrag"]);
    assert!(
        defrag
            .stdout
            .starts_with("Finished defragmenting etcd member["),
        "{defrag:?}"
    );
    let disarm = etcdctl(&ep, &["alarm", "disarm"]);
    assert!(
        disarm.stdout.trim_end().ends_with("alarm:NOSPACE"),
        "{disarm:?}"
    );
    assert_eq!(etcdctl(&ep, &["alarm", "list"]).stdout, "");
    assert_eq!(etcdctl(&ep, &["put", "small", "v"]).stdout, "OK\n");
    assert_eq!(get(&ep, "/health").status, 200);
    let status = etcdctl(&ep, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert!(status[0]["Status"]["errors"].is_null(), "{status}");
    assert!(status[0]["Status"]["dbSize"].as_i64().unwrap_or(0) < 1048576);
}

/// Flips one byte of the value holding `AAAAAAAAAAAAAAAA` in a stopped member's own storage,
/// behind raft's back.
fn flip_canary_byte(data_dir: &std::path::Path) {
    use oxcd::storage::{Batch, Cf, Storage};
    let db = oxcd::node::db_path(data_dir);
    let storage = Storage::open(&db).expect("open the follower's storage");
    let mut rows = Vec::new();
    storage
        .scan(Cf::Kv, &[], None, |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .expect("scan");
    let needle = b"AAAAAAAAAAAAAAAA";
    let (k, mut v) = rows
        .into_iter()
        .find(|(_, v)| v.windows(needle.len()).any(|w| w == needle))
        .expect("the canary's row");
    let at = v
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("position");
    v[at + 8] = b'B';
    let mut b = Batch::new();
    b.put(Cf::Kv, k, v);
    storage.write(b, true).expect("write");
}

#[tokio::test]
async fn with_the_initial_check_a_member_whose_data_differs_refuses_to_start() {
    let mut c = Cluster::start_with(Kind::Oxcd, 3, &[]).await;
    let eps = c.endpoints();
    assert!(etcdctl(&eps, &["put", "canary", "AAAAAAAAAAAAAAAA"]).ok);
    assert!(etcdctl(&eps, &["put", "last", "v"]).ok);
    let leader = c.wait_leader().await;
    let (f, g) = ((leader + 1) % 3, (leader + 2) % 3);
    for m in [f, g] {
        wait_until("the follower to apply every write", WAIT, || {
            let ep = c.members[m].endpoint();
            async move {
                etcdctl(
                    &ep,
                    &["get", "last", "--consistency=s", "--print-value-only"],
                )
                .stdout
                    == "v\n"
            }
        })
        .await;
    }
    assert!(c.members[f].stop().await, "the follower stops cleanly");
    flip_canary_byte(&c.members[f].spec.data_dir);
    let check = "--experimental-initial-corrupt-check".to_string();
    c.members[f].spec.extra.push(check.clone());
    c.members[f].start();
    let exit = c.members[f].wait_exit(WAIT).await;
    let log = c.members[f].log();
    assert_eq!(exit, Some(false), "the member must refuse to start:\n{log}");
    assert!(
        log.contains("found data inconsistency with peers"),
        "etcd's reason in the log:\n{log}"
    );
    assert!(
        log.contains("found different hash values from remote peer"),
        "{log}"
    );
    // A member whose data is intact passes the same check and serves.
    assert!(
        c.members[g].stop().await,
        "the other follower stops cleanly"
    );
    c.members[g].spec.extra.push(check);
    c.members[g].start();
    c.members[g].wait_serving().await;
    assert!(
        c.members[g]
            .log()
            .contains("initial corruption checking passed; no corruption"),
        "{}",
        c.members[g].log()
    );
    let out = etcdctl(
        &c.members[g].endpoint(),
        &["get", "canary", "--print-value-only"],
    );
    assert_eq!(out.stdout, "AAAAAAAAAAAAAAAA\n", "{out:?}");
}

#[tokio::test]
async fn a_member_whose_data_differs_is_flagged_corrupt_by_the_leader() {
    let mut c =
        Cluster::start_with(Kind::Oxcd, 3, &["--experimental-corrupt-check-time=300ms"]).await;
    let eps = c.endpoints();
    assert!(etcdctl(&eps, &["put", "canary", "AAAAAAAAAAAAAAAA"]).ok);
    for i in 0..5 {
        assert!(etcdctl(&eps, &["put", &format!("k{i}"), "v"]).ok);
    }
    let leader = c.wait_leader().await;
    let f = (leader + 1) % 3;
    // Every member has applied the writes before the follower stops.
    wait_until("the follower to apply every write", WAIT, || {
        let ep = c.members[f].endpoint();
        async move {
            etcdctl(&ep, &["get", "k4", "--consistency=s", "--print-value-only"]).stdout == "v\n"
        }
    })
    .await;
    let status = etcdctl(
        &c.members[f].endpoint(),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let follower_id = v[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member id");
    assert!(c.members[f].stop().await, "the follower stops cleanly");
    flip_canary_byte(&c.members[f].spec.data_dir);
    c.members[f].start();
    c.members[f].wait_serving().await;

    let ep = c.members[leader].endpoint();
    let expected = format!("memberID:{follower_id} alarm:CORRUPT");
    wait_until("the leader to raise CORRUPT for the follower", WAIT, || {
        let ep = ep.clone();
        let expected = expected.clone();
        async move { etcdctl(&ep, &["alarm", "list"]).stdout.contains(&expected) }
    })
    .await;
    // Every member refuses key-value commands, and reports the alarm.
    for m in &c.members {
        let out = etcdctl(&m.endpoint(), &["put", "after", "x"]);
        assert_eq!(
            error_line(&out),
            "Error: etcdserver: corrupt cluster",
            "{out:?}"
        );
        // The member reports the alarm once it has applied it.
        wait_until("the member to apply the alarm", WAIT, || {
            let ep = m.endpoint();
            async move { get(&ep, "/readyz").status == 503 }
        })
        .await;
        let ready = get(&m.endpoint(), "/readyz?verbose");
        assert_eq!(ready.status, 503, "{ready:?}");
        assert!(
            ready.body.contains("[-]data_corruption failed: "),
            "{ready:?}"
        );
        let h = get(&m.endpoint(), "/health");
        assert_eq!(
            (h.status, h.body.as_str()),
            (503, r#"{"health":"false","reason":"ALARM CORRUPT"}"#)
        );
    }
}

/// A minimal OpenTelemetry collector: records the spans it receives, by service name.
#[derive(Clone, Default)]
struct Collector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut out = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in &request.get_ref().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((service.clone(), s.name.clone()));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn requests_are_traced_to_an_otlp_collector() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .expect("bind the collector");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let address = format!("--experimental-distributed-tracing-address={addr}");
    let c = Cluster::start_with(
        Kind::Oxcd,
        1,
        &[
            "--experimental-enable-distributed-tracing",
            &address,
            "--experimental-distributed-tracing-service-name=oxcd-it",
            "--experimental-distributed-tracing-sampling-rate=1000000",
        ],
    )
    .await;
    assert!(etcdctl(&c.endpoints(), &["put", "traced", "1"]).ok);
    wait_until("the collector to receive the Put's span", WAIT, || {
        let spans = collector.spans.clone();
        async move {
            spans
                .lock()
                .map(|s| {
                    s.iter()
                        .any(|(svc, name)| svc == "oxcd-it" && name == "etcdserverpb.KV/Put")
                })
                .unwrap_or(false)
        }
    })
    .await;
    server.abort();
}

#[tokio::test]
async fn etcdctl_check_perf_passes_on_a_three_member_cluster() {
    let c = Cluster::start(3).await;
    // `check perf --load=s`: 50 clients writing 150 puts/s for 60 s; it passes when the cluster
    // keeps up (throughput, slowest request and its spread within etcd's limits).
    let out = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.endpoints()))
        .args(["check", "perf", "--load=s"])
        .output()
        .expect("run etcdctl check perf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PASS: Throughput") && !stdout.contains("FAIL"),
        "check perf failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It cleans up after itself.
    let left = etcdctl(
        &c.endpoints(),
        &[
            "get",
            "/etcdctl-check-perf/",
            "--prefix",
            "--count-only",
            "-w",
            "json",
        ],
    );
    assert!(!left.stdout.contains("\"count\""), "{left:?}");
}

/// MoveLeader moves leadership to the named voter; it and Defragment answer with a header or
/// without one exactly as the real etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_and_defragment_headers_match_etcd() {
    use oxcd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use oxcd::proto::etcdserverpb::{DefragmentRequest, MoveLeaderRequest, StatusRequest};
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Oxcd] {
        let c = Cluster::start_with(kind, 3, &[]).await;
        let leader = c.wait_leader().await;
        let target = (leader + 1) % 3;
        let mut to = MaintenanceClient::new(c.members[target].channel().await);
        let target_id = to
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .header
            .expect("status header")
            .member_id;
        // oxcd's transfer can fail when the transferee's campaign loses (openraft's leader
        // lease); the call then answers "request timed out" and is tried again, as the
        // controller does.
        let mut moved = None;
        let give_up = std::time::Instant::now() + WAIT;
        while moved.is_none() {
            // (A leader that is already the target answers at once, as etcd's.)
            let leader = c.wait_leader().await;
            let mut lead = MaintenanceClient::new(c.members[leader].channel().await);
            match lead.move_leader(MoveLeaderRequest { target_id }).await {
                Ok(r) => moved = Some(r.into_inner()),
                Err(e) => assert!(
                    std::time::Instant::now() < give_up,
                    "{kind:?}: move leader: {e}"
                ),
            }
        }
        let moved = moved.expect("a MoveLeader answer");
        let st = to
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            st.leader, target_id,
            "{kind:?}: leadership moved to the target"
        );
        let defrag = to
            .defragment(DefragmentRequest {})
            .await
            .expect("defragment")
            .into_inner();
        seen.push((moved.header.is_some(), defrag.header.is_some()));
    }
    assert_eq!(
        seen[1], seen[0],
        "(MoveLeader, Defragment) header presence: oxcd vs etcd"
    );
}

/// `--enable-pprof`: a CPU profile taken while the member serves writes comes back as a gzipped
/// pprof `profile.proto` with CPU samples (what `go tool pprof` reads); Go's other profiles are
/// unknown here; without the flag nothing is served under `/debug/pprof/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_serves_cpu_profiles_only_when_enabled() {
    use pprof::protos::Message;
    use std::io::Read;
    let c = Cluster::start_with(Kind::Oxcd, 1, &["--enable-pprof"]).await;
    let ep = c.members[0].endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("profile.pb.gz");
    let url = format!("http://{ep}/debug/pprof/profile?seconds=2");
    let out = file.clone();
    let fetch = std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "30", "-o"])
            .arg(&out)
            .arg(&url)
            .status()
            .expect("curl")
    });
    // Load until the profile is back, so its whole window has samples (curl may start late on
    // a busy machine; a load of fixed length could end before the window opens).
    let mut kv = c.client().await;
    let mut i = 0u32;
    while !fetch.is_finished() {
        kv.put(format!("p{}", i % 100), "v".repeat(100), None)
            .await
            .expect("put");
        i += 1;
    }
    assert!(fetch.join().expect("curl thread").success());
    let gz = std::fs::read(&file).expect("the profile");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzipped");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .expect("gunzip");
    let profile = pprof::protos::Profile::decode(&raw[..]).expect("a profile.proto");
    assert!(
        !profile.sample.is_empty(),
        "CPU samples while serving {i} puts"
    );
    let heap = get(&ep, "/debug/pprof/heap");
    assert_eq!(
        (heap.status, heap.body.as_str()),
        (404, "Unknown profile\n")
    );
    let cmdline = get(&ep, "/debug/pprof/cmdline");
    assert!(cmdline.body.contains("--enable-pprof"), "{cmdline:?}");

    let plain = Cluster::start(1).await;
    assert_eq!(
        get(&plain.members[0].endpoint(), "/debug/pprof/profile").status,
        404
    );
}
