//! etcd's downgrade job: whether a downgrade is enabled and to which cluster version, kept in
//! the `meta` column family as etcd keeps it in its `cluster` bucket (`downgrade`, the JSON of
//! `{"target-version": ..., "enabled": ...}`).
//!
//! Invariants: the job changes only by applying [`crate::apply::Op::Downgrade`], in the same batch
//! as the applied index, so every member holds the same job; reading it never fails a request
//! (an unreadable row counts as no job, and is logged).

use serde::{Deserialize, Serialize};

use crate::storage::{Batch, Cf, Storage};

/// The `meta` row of the downgrade job.
pub const META_DOWNGRADE: &[u8] = b"downgrade";

/// The cluster version oxcd runs (the etcd API it serves).
pub const CLUSTER_VERSION: (u64, u64) = (3, 5);

/// A downgrade job, as etcd stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowngradeInfo {
    /// The target cluster version, `major.minor.0` (empty when cancelled).
    #[serde(rename = "target-version")]
    pub target_version: String,
    /// Whether the job is on.
    pub enabled: bool,
}

impl DowngradeInfo {
    /// The job recorded in `storage` (none when there is no row).
    pub fn read(storage: &Storage) -> DowngradeInfo {
        match storage.get(Cf::Meta, META_DOWNGRADE) {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable downgrade row: treated as no downgrade");
                DowngradeInfo::default()
            }),
            Ok(None) => DowngradeInfo::default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the downgrade row");
                DowngradeInfo::default()
            }
        }
    }

    /// Records this job in `batch`.
    pub fn write(&self, batch: &mut Batch) {
        match serde_json::to_vec(self) {
            Ok(json) => batch.put(Cf::Meta, META_DOWNGRADE.to_vec(), json),
            Err(e) => tracing::error!(error = %e, "cannot encode the downgrade job"),
        }
    }
}

/// go-semver's `major.minor.patch[-pre][+meta]`, as etcd parses versions: digits only in the
/// three numbers, identifiers of `[0-9A-Za-z-]` separated by dots after `-` and `+`.
fn semver(s: &str) -> Option<(u64, u64, u64)> {
    let ident = |part: &str| {
        part.is_empty()
            || part.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    let (rest, meta) = s.split_once('+').unwrap_or((s, ""));
    let (core, pre) = rest.split_once('-').unwrap_or((rest, ""));
    if !ident(meta) || !ident(pre) {
        return None;
    }
    let nums: Vec<&str> = core.splitn(3, '.').collect();
    if nums.len() != 3 {
        return None;
    }
    let num = |p: &str| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<i64>().ok())
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
    };
    Some((num(nums[0])?, num(nums[1])?, num(nums[2])?))
}

/// etcd's `convertToClusterVersion`: a version (`3.4`, `3.4.7`, `3.4.0-rc.1`, ...) as the
/// cluster version `major.minor`; `None` when it does not parse.
pub fn parse_cluster_version(v: &str) -> Option<(u64, u64)> {
    semver(v)
        .or_else(|| semver(&format!("{v}.0")))
        .map(|(major, minor, _)| (major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_etcd_parses_them() {
        for ok in [
            "3.4",
            "3.4.0",
            "3.4.7",
            "3.4.0-rc.1",
            "3.4.0+abc",
            "3.4.0-",
            "03.04",
        ] {
            assert_eq!(parse_cluster_version(ok), Some((3, 4)), "{ok}");
        }
        for bad in [
            "v3.4",
            "v3.4.0",
            "3",
            "",
            "3.4.",
            "3.4.0.0",
            " 3.4",
            "3*.9",
            "3.4-rc.1",
            "3.4+x",
            "3.4.0-rc_1",
            "99999999999999999999.1",
        ] {
            assert_eq!(parse_cluster_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_job_is_stored_as_etcds_json() {
        let on = DowngradeInfo {
            target_version: "3.4.0".to_string(),
            enabled: true,
        };
        assert_eq!(
            serde_json::to_string(&on).ok().as_deref(),
            Some(r#"{"target-version":"3.4.0","enabled":true}"#)
        );
    }
}
