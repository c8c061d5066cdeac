//! oxcd: an etcd-compatible, Raft-replicated key-value store.
//!
//! Layers (dependencies point downward only; a test scans `use crate::` lines to hold this):
//!
//! ```text
//! main -> controller -> gateway -> server -> health -> node -> raft -> apply -> {mvcc, lease, auth}
//!      -> storage
//! (controller talks to other members only over the etcd client API)
//! fuzzing (the fuzz targets) sits on top: it calls every parser, from gateway down
//! types, config, telemetry, metrics, proto, failpoint: leaves, usable from anywhere
//! ```
//!
//! Invariants the whole crate keeps:
//! - Every write goes through the raft log, even on a single member (a one-member raft group).
//! - Applying a command is deterministic and commits its data with the applied log id in one
//!   RocksDB batch.
//! - A log append is fsynced before it is acknowledged; concurrent appends share the fsync.
//! - `server::error` is the one place errors become etcd's gRPC codes and strings.
//! - `rocksdb` is used only in `storage`, `openraft` only in `raft`, `kube` and `k8s-openapi`
//!   only in `controller`.

pub mod apply;
pub mod auth;
pub mod config;
pub mod controller;
pub mod failpoint;
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod storage;
pub mod telemetry;
#[cfg(test)]
mod test_alloc;
pub mod tls;
pub mod types;

/// The oxcd version.
pub const VERSION: &str = env!("OXCD_VERSION");
/// The etcd server version oxcd reports in Status, `/version` and metrics (its API level).
pub const REPORTED_ETCD_VERSION: &str = "3.5.0";
/// The etcd API version oxcd speaks.
pub const ETCD_API_VERSION: &str = "3.5";

#[cfg(test)]
mod layering {
    //! Holds the layer rules by scanning the source: each module may use only modules below it
    //! (or the leaves), and each outside engine stays in its one module.

    use std::path::Path;

    /// Rank of each module; a module may use modules of lower rank and the leaves (rank 0).
    const RANKS: &[(&str, u32)] = &[
        ("types", 0),
        ("config", 0),
        ("telemetry", 0),
        ("proto", 0),
        ("metrics", 0),
        ("tls", 0),
        ("failpoint", 0),
        ("storage", 1),
        ("mvcc", 2),
        ("lease", 2),
        ("auth", 2),
        ("apply", 3),
        ("raft", 4),
        ("cluster", 5),
        ("node", 6),
        ("health", 7),
        ("server", 8),
        ("gateway", 9),
        ("controller", 10),
        ("fuzzing", 11),
    ];

    fn rank(m: &str) -> Option<u32> {
        RANKS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r)
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().and_then(|x| x.to_str()) == Some("rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn dependencies_point_downward() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut violations = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let Some(own) = rank(&module) else { continue };
            let text = std::fs::read_to_string(&f).expect("read");
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(pos) = rest.find("crate::") {
                    rest = &rest[pos + "crate::".len()..];
                    let used: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let Some(r) = rank(&used) else { continue };
                    let same_tier_clash = r == own && r == 2 && used != module;
                    if used != module && r != 0 && (r >= own || same_tier_clash) {
                        violations.push(format!(
                            "{}:{}: {module} uses {used}",
                            rel.display(),
                            n + 1
                        ));
                    }
                }
                for (engine, home) in [
                    ("rocksdb::", "storage"),
                    ("openraft::", "raft"),
                    ("kube::", "controller"),
                    ("k8s_openapi::", "controller"),
                ] {
                    let code = line.split("//").next().unwrap_or("");
                    if code.contains(engine) && module != home {
                        violations.push(format!(
                            "{}:{}: {engine} outside {home}",
                            rel.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
        assert!(
            violations.is_empty(),
            "layer violations:\n{}",
            violations.join("\n")
        );
    }
}
