//! The reliability campaign: a real three-member cluster under etcd's mix of client operations
//! while one kind of fault is injected again and again; the recorded history then goes through
//! every checker ([`check`]), and every member must end with the same HashKV.
//!
//! The suite runs a short slice of every scenario against oxcd (and a few against the real etcd,
//! the control). `make chaos` runs the whole campaign ([`campaign`]): every scenario against both
//! servers until the operation budget (`OXCD_CHAOS_OPS`, a million by default) is spent, and
//! prints the matrix: scenario, operations, violations, lost writes, unavailability.
//!
//! Invariants: a scenario injects at least one fault; after each it waits for the cluster to
//! recover on its own (a leader every member agrees on, and the workload writing again) and
//! counts a cluster that does not as a violation; every process, namespace and directory it made
//! is gone when it returns.

mod check;
mod faults;
mod watch;
pub mod workload;

use std::time::{Duration, Instant};

pub use check::check;
pub use faults::Fault;
use faults::{applies, inject, Dice};
use workload::{Outcome, Req, Workload};

use crate::harness::{Cluster, Kind, WAIT};
use crate::netns::Net;

/// How much load one scenario gets.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Stop injecting faults once this many operations are recorded.
    pub ops: usize,
    /// Or once this much time has passed.
    pub max: Duration,
    /// Concurrent clients.
    pub clients: usize,
}

impl Budget {
    /// The suite's short slice of a scenario.
    pub fn slice() -> Budget {
        Budget {
            ops: 1500,
            max: Duration::from_secs(12),
            clients: 6,
        }
    }
}

/// One row of the matrix.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario.
    pub fault: Fault,
    /// The server.
    pub kind: Kind,
    /// Faults injected.
    pub faults: usize,
    /// The checkers' report.
    pub report: check::Report,
    /// Time from each fault to the first write that started after it and succeeded (ms).
    pub unavailable_ms: Vec<u64>,
    /// Faults the cluster did not recover from on its own.
    pub unrecovered: usize,
    /// Whether every member ended with the same HashKV.
    pub hash_equal: bool,
    /// Notes from the faults (failpoints hit, refusals), deduplicated.
    pub notes: Vec<String>,
    /// Wall time of the scenario.
    pub took: Duration,
}

impl Row {
    /// Violations of any kind: the checkers', unrecovered faults, unequal hashes.
    pub fn violations(&self) -> usize {
        self.report.violations.len() + self.unrecovered + usize::from(!self.hash_equal)
    }

    fn unavailability(&self) -> String {
        let mut v = self.unavailable_ms.clone();
        v.sort_unstable();
        match (v.get(v.len() / 2), v.last()) {
            (Some(m), Some(x)) => format!("{m} / {x}"),
            _ => "-".to_string(),
        }
    }

    /// The row as a line of the markdown matrix.
    pub fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fault.name(),
            match self.kind {
                Kind::Oxcd => "oxcd",
                Kind::Etcd => "etcd",
            },
            self.report.ops,
            self.report.answered,
            self.report.unknown,
            self.faults,
            self.violations(),
            self.report.lost,
            self.unavailability(),
            self.took.as_secs(),
            self.notes.join("; ")
        )
    }
}

/// The matrix's header.
pub const HEADER: &str = "| scenario | server | operations | answered | unknown writes | faults | violations | lost writes | unavailable ms (median / max) | s | notes |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// Waits until every running member agrees on a leader and the workload acknowledges writes
/// again; false when that does not happen on its own within the harness's patience.
async fn recovered(c: &Cluster, w: &Workload) -> bool {
    let deadline = Instant::now() + WAIT * 2;
    while c.leader().await.is_none() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from = w.acked_writes();
    while w.acked_writes() < from + 20 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Whether every running member reports the same HashKV at the same revision (waits for them
/// to converge).
async fn same_hashkv(c: &Cluster) -> bool {
    let deadline = Instant::now() + WAIT * 2;
    while Instant::now() < deadline {
        let mut seen = Vec::new();
        for m in c.members.iter().filter(|m| m.running()) {
            let Ok(mut client) = crate::harness::try_connect(&[m.endpoint()]).await else {
                seen.push((-1, 0));
                continue;
            };
            match client.hash_kv(0).await {
                Ok(h) => seen.push((h.header().map(|h| h.revision()).unwrap_or(0), h.hash())),
                Err(_) => seen.push((-1, 0)),
            }
        }
        if seen.windows(2).all(|p| p[0] == p[1]) && seen.first().is_some_and(|s| s.0 > 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs one scenario: fault `fault` on a cluster of `kind` under `budget`.
pub async fn run(kind: Kind, fault: Fault, budget: Budget) -> Row {
    assert!(
        applies(kind, fault),
        "{} cannot run {}",
        kind_name(kind),
        fault.name()
    );
    let started = Instant::now();
    let net = fault.needs_net().then(|| Net::new(3));
    let mut c = match &net {
        Some(net) => Cluster::start_in_net(kind, net, fault.flags()).await,
        None => Cluster::start_with(kind, 3, fault.flags()).await,
    };
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let w = Workload::start(&endpoints, budget.clients);
    crate::harness::wait_until("the workload to write", WAIT, || {
        let n = w.acked_writes();
        async move { n >= 20 }
    })
    .await;
    let mut dice = Dice(0x5851_f42d_4c95_7f2d ^ (fault as u64 + 1));
    let mut times = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut unrecovered = 0;
    let mut round = 0;
    // The failpoints scenario passes every point at least once.
    let min_rounds = if fault == Fault::Failpoints {
        oxcd::failpoint::ALL.len()
    } else {
        1
    };
    while round < min_rounds || (w.ops_so_far() < budget.ops && started.elapsed() < budget.max) {
        let injected = inject(fault, &mut c, net.as_ref(), &w, &mut dice, round).await;
        times.push(injected.at);
        if let Some(n) = &injected.note {
            eprintln!("{} round {round}: {n}", fault.name());
        }
        if let Some(n) = injected.note {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        if !recovered(&c, &w).await {
            unrecovered += 1;
            notes.push(format!("round {round}: no recovery"));
            for m in &c.members {
                let log = m.log();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!(
                    "--- {} (running: {}), last lines of its log:\n{}",
                    m.spec.name,
                    m.running(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            break;
        }
        round += 1;
    }
    let history = w.finish().await;
    notes.extend(top_errors(&history.ops));
    let hash_equal = same_hashkv(&c).await;
    let report = check::check(&history);
    if !report.violations.is_empty() {
        dump(kind, fault, &history, &report.violations);
    }
    let unavailable_ms = times
        .iter()
        .filter_map(|&t| {
            history
                .ops
                .iter()
                .filter(|o| {
                    o.start >= t
                        && matches!(o.req, Req::Put { .. })
                        && matches!(o.outcome, Outcome::Ok(_))
                })
                .map(|o| o.end)
                .min()
                .map(|end| (end - t) / 1000)
        })
        .collect();
    drop(c);
    drop(net);
    Row {
        fault,
        kind,
        faults: times.len(),
        report,
        unavailable_ms,
        unrecovered,
        hash_equal,
        notes,
        took: started.elapsed(),
    }
}

/// Writes a history with violations to `OXCD_CHAOS_DUMP` (a directory), when set, for study.
fn dump(kind: Kind, fault: Fault, h: &workload::History, violations: &[String]) {
    let Ok(dir) = std::env::var("OXCD_CHAOS_DUMP") else {
        return;
    };
    let path = std::path::Path::new(&dir).join(format!("{kind:?}-{}.txt", fault.name()));
    let text = format!("{}\n\n{h:#?}\n", violations.join("\n"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => eprintln!("history written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// The commonest errors of operations with unknown outcome, for the notes.
fn top_errors(ops: &[workload::Op]) -> Option<String> {
    let mut count: std::collections::BTreeMap<String, usize> = Default::default();
    for o in ops {
        if let Outcome::Unknown(e) = &o.outcome {
            // The server's text, without the client library's wrapping.
            let text = e
                .split("message: \"")
                .nth(1)
                .and_then(|m| m.split('"').next())
                .unwrap_or(e);
            *count.entry(text.chars().take(60).collect()).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = count.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    (!v.is_empty()).then(|| {
        let top: Vec<String> = v.iter().take(3).map(|(e, n)| format!("{n}× {e}")).collect();
        format!("errors: {}", top.join(", "))
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Oxcd => "oxcd",
        Kind::Etcd => "etcd",
    }
}

/// Runs a slice of one scenario and fails on any violation.
async fn slice(kind: Kind, fault: Fault) -> Row {
    let row = run(kind, fault, Budget::slice()).await;
    eprintln!("{HEADER}\n{}", row.line());
    assert!(
        row.violations() == 0,
        "{} on {}: {} violations (hash equal: {}, unrecovered: {}):\n{}",
        fault.name(),
        kind_name(kind),
        row.violations(),
        row.hash_equal,
        row.unrecovered,
        row.report.violations.join("\n")
    );
    assert!(
        row.report.answered > 100,
        "too few operations answered: {}",
        row.report.answered
    );
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_follower() {
    slice(Kind::Oxcd, Fault::KillFollower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader() {
    slice(Kind::Oxcd, Fault::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all() {
    slice(Kind::Oxcd, Fault::KillAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_leader() {
    slice(Kind::Oxcd, Fault::StopLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_leader() {
    slice(Kind::Oxcd, Fault::PartitionLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_way_cut() {
    slice(Kind::Oxcd, Fault::OneWayCut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_peer_packets() {
    slice(Kind::Oxcd, Fault::DropPeer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_member() {
    slice(Kind::Oxcd, Fault::ReplaceMember).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_catchup() {
    slice(Kind::Oxcd, Fault::SnapshotCatchup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_defrag() {
    slice(Kind::Oxcd, Fault::CompactDefrag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leader() {
    slice(Kind::Oxcd, Fault::TransferLeader).await;
}

/// Every failpoint in turn, each reached under load (a crash anywhere else is a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failpoints() {
    let row = slice(Kind::Oxcd, Fault::Failpoints).await;
    let unexpected: Vec<&String> = row
        .notes
        .iter()
        .filter(|n| n.contains("exited without reaching it"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

/// The control: the same checkers find nothing wrong with the real etcd under the same faults.
/// The leader is lost by SIGSTOP, not SIGKILL: etcd 3.5.1 itself breaks the checkers after a
/// crash now and then (etcd issue 13766, fixed in 3.5.3: its consistent index was not saved
/// atomically with the data, so a restarted member applies entries twice; a CI run saw 85
/// violations and unequal hashes), and a control that fails on etcd's bug tells nothing about
/// the checkers. `make chaos SERVERS=etcd` still crashes etcd and reports what it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_control_stop_leader() {
    slice(Kind::Etcd, Fault::StopLeader).await;
}

/// The control under a partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_control_partition_leader() {
    slice(Kind::Etcd, Fault::PartitionLeader).await;
}

/// The whole campaign (`make chaos`): every scenario against oxcd and the real etcd until
/// `OXCD_CHAOS_OPS` operations (a million by default) are spent, split evenly; prints the
/// matrix and writes it to `OXCD_CHAOS_OUT` (default `chaos-matrix.md`). Fails on any violation
/// by oxcd. `OXCD_CHAOS_SERVERS` (`oxcd,etcd`) and `OXCD_CHAOS_FAULTS` (names, comma-separated)
/// narrow it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long campaign: make chaos"]
async fn campaign() {
    let total: usize = std::env::var("OXCD_CHAOS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let servers = std::env::var("OXCD_CHAOS_SERVERS").unwrap_or_else(|_| "oxcd,etcd".into());
    let only = std::env::var("OXCD_CHAOS_FAULTS").unwrap_or_default();
    let out = std::env::var("OXCD_CHAOS_OUT").unwrap_or_else(|_| "chaos-matrix.md".into());
    let kinds: Vec<Kind> = servers
        .split(',')
        .filter_map(|s| match s.trim() {
            "oxcd" => Some(Kind::Oxcd),
            "etcd" => Some(Kind::Etcd),
            _ => None,
        })
        .collect();
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|n| n.trim() == f.name()))
        .collect();
    let per = total / faults.len().max(1);
    let mut lines = vec![HEADER.to_string()];
    let mut failed = Vec::new();
    for &fault in &faults {
        for &kind in &kinds {
            if !applies(kind, fault) {
                continue;
            }
            let budget = Budget {
                ops: per,
                max: Duration::from_secs(3600),
                clients: 12,
            };
            let row = run(kind, fault, budget).await;
            eprintln!("{}", row.line());
            for v in row.report.violations.iter().take(20) {
                eprintln!("    {v}");
            }
            if kind == Kind::Oxcd && row.violations() > 0 {
                failed.push(format!(
                    "{}: {}",
                    fault.name(),
                    row.report.violations.join("\n")
                ));
            }
            lines.push(row.line());
            let _ = std::fs::write(&out, lines.join("\n") + "\n");
        }
    }
    eprintln!("\n{}", lines.join("\n"));
    assert!(failed.is_empty(), "oxcd violations:\n{}", failed.join("\n"));
}
