//! Failpoints: named places where a test build crashes the member or fails an operation on
//! request, as etcd's gofail points do, for the reliability campaign (`tests/it/chaos`).
//!
//! A point is armed through the `FAILPOINTS` environment variable read at start-up
//! (`name=action;name2=action`, the `fail` crate's syntax): `return` fires the point, and
//! `N*off->return` fires it on the (N+1)th pass, so a member crashes under load rather than at
//! once. A [`crash_point!`] aborts the process where it stands (no destructor, no flush: a
//! crash); an [`error_point!`] makes the enclosing function return the given error.
//!
//! Invariants: the points exist only with the `failpoints` feature; without it both macros expand
//! to nothing, so release builds carry no trace of them. A point is placed where a crash hurts
//! most: between a write and its sync, between an apply batch and its commit, in the middle of a
//! snapshot, a compaction, a lease revoke, a membership change and a defragmentation.

/// Every crash and storage-error failpoint, by name, for the campaign and the docs. One more
/// point, `peer-forward-batch-unimplemented`, makes a leader answer forwarded batches as an
/// older oxcd does (Unimplemented), for the rolling-upgrade test; the campaign leaves it out, as
/// it harms nothing.
pub const ALL: &[&str] = &[
    "raft-log-before-append",
    "raft-log-before-sync",
    "raft-log-after-sync",
    "raft-log-sync-error",
    "apply-before-commit",
    "apply-after-commit",
    "apply-lease-revoke",
    "apply-membership",
    "snapshot-build",
    "snapshot-send",
    "snapshot-install",
    "compaction-batch",
    "defrag",
];

/// Arms the points named in `FAILPOINTS` (a no-op without the `failpoints` feature); the
/// returned guard keeps them armed for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    let scenario = fail::FailScenario::setup();
    if let Ok(points) = std::env::var("FAILPOINTS") {
        if !points.is_empty() {
            tracing::warn!(%points, "failpoints armed");
        }
    }
    Some(scenario)
}

/// Arms the points named in `FAILPOINTS` (a no-op without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

/// Whether the point `name` fires on this pass.
#[cfg(feature = "failpoints")]
pub fn fires(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

/// Crashes the process at failpoint `name`: a message on stderr (the harness looks for it),
/// then `abort`, which runs no destructor and flushes nothing.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing");
    std::process::abort()
}

/// Crashes the process here when the named failpoint fires (nothing without the `failpoints`
/// feature).
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoint::fires($name) {
                $crate::failpoint::crash($name);
            }
        }
    };
}

/// Returns `Err($err)` from the enclosing function when the named failpoint fires (nothing
/// without the `failpoints` feature).
#[macro_export]
macro_rules! error_point {
    ($name:expr, $err:expr) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoint::fires($name) {
                eprintln!("failpoint {}: failing", $name);
                return Err($err);
            }
        }
    };
}
