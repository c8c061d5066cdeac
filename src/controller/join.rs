//! Bootstrap and rejoin from pod identity, before the member's node starts: decide whether this
//! member creates the cluster, joins it as a learner, starts on its own data, or waits.
//!
//! Invariants:
//! - The decision ([`plan`]) is a pure function of what was observed: this member's data
//!   directory and one member list read over the etcd client API. The driver ([`prepare`])
//!   observes, acts once, and observes again, so a crash at any step is repaired by the next start.
//! - Only ordinal 0 creates a cluster, and only when no member of the StatefulSet answers.
//! - A new member is always added as a learner; at most `max_learners` learners at a time, the
//!   others wait their turn. An entry with this member's peer URL that never started is reused;
//!   one that started but whose data is gone is removed first, then added again as a learner.
//! - Destructive steps (removing an entry, moving data aside) are taken only on a linearizable
//!   member list, never on a possibly stale one. Data is never deleted: a removed member's
//!   directory is renamed beside itself.
//! - Nothing here removes a member because its pod restarted or disappeared.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{ClientError, ClientOptions, EtcdClient};
use super::identity::PodIdentity;
use crate::proto::etcdserverpb::Member;

/// What this member found in its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    /// The member ID saved there.
    pub member_id: u64,
    /// The cluster ID saved there.
    pub cluster_id: u64,
}

/// One member list, read from a member of this StatefulSet.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// The endpoint that answered.
    pub via: String,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The members.
    pub members: Vec<Member>,
    /// Whether the list was read linearizably (confirmed by the leader's quorum).
    pub linearizable: bool,
}

/// Everything [`plan`] decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// This member's name (its pod name).
    pub name: String,
    /// This member's ordinal.
    pub ordinal: u32,
    /// This member's peer URL.
    pub peer_url: String,
    /// The member in the data directory, if any.
    pub stored: Option<StoredMember>,
    /// A running cluster, if any member answered.
    pub cluster: Option<ClusterView>,
    /// The most learners the cluster allows at once (`--max-learners`).
    pub max_learners: usize,
    /// Whether this ordinal is still wanted by the StatefulSet.
    pub wanted: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Start on the data directory as it is.
    StartOnData,
    /// Create a new one-member cluster (ordinal 0 only).
    Bootstrap,
    /// Start with `--initial-cluster-state=existing` and this `--initial-cluster`.
    Join {
        /// `name=peerURL,...` of the started members and this one.
        initial_cluster: String,
    },
    /// Add this member as a learner, then look again.
    AddLearner {
        /// The endpoint to ask.
        via: String,
    },
    /// Remove the entry with this member's peer URL whose data is gone, then look again.
    RemoveStale {
        /// The entry's ID.
        id: u64,
        /// The endpoint to ask.
        via: String,
    },
    /// This member was removed from the cluster: rename its data directory, then look again.
    MoveAside,
    /// Do nothing yet, for this reason; look again later.
    Wait(String),
    /// Stop, for this reason.
    Exit(String),
}

fn entry_for<'a>(members: &'a [Member], peer_url: &str) -> Option<&'a Member> {
    members
        .iter()
        .find(|m| m.peer_ur_ls.iter().any(|u| u == peer_url))
}

/// The initial cluster a joining member starts with: every started member and this one.
fn initial_cluster(members: &[Member], name: &str, peer_url: &str) -> String {
    let mut parts: Vec<String> = members
        .iter()
        .filter(|m| !m.name.is_empty() && !m.peer_ur_ls.iter().any(|u| u == peer_url))
        .flat_map(|m| m.peer_ur_ls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    parts.push(format!("{name}={peer_url}"));
    parts.join(",")
}

/// Decides the next step from what was observed.
pub fn plan(o: &Observed) -> Plan {
    match (&o.stored, &o.cluster) {
        (Some(_), None) => Plan::StartOnData,
        (Some(stored), Some(c)) => {
            if c.cluster_id != stored.cluster_id {
                // Another cluster answers (for example ordinal 0 lost its volume and created a
                // new one): this member's data is the better copy; keep it and start.
                return Plan::StartOnData;
            }
            if c.members.iter().any(|m| m.id == stored.member_id) {
                return Plan::StartOnData;
            }
            if !c.linearizable {
                return Plan::Wait(format!(
                    "member {:x} is missing from the member list at {}, which could not be confirmed with the leader",
                    stored.member_id, c.via
                ));
            }
            if o.wanted {
                Plan::MoveAside
            } else {
                Plan::Exit(format!(
                    "member {:x} was removed from the cluster and ordinal {} is no longer wanted",
                    stored.member_id, o.ordinal
                ))
            }
        }
        (None, None) if o.ordinal == 0 => Plan::Bootstrap,
        (None, None) => Plan::Wait(
            "no member of the cluster answers yet; only ordinal 0 creates a new cluster".to_string(),
        ),
        (None, Some(c)) => match entry_for(&c.members, &o.peer_url) {
            Some(m) if m.name.is_empty() => Plan::Join {
                initial_cluster: initial_cluster(&c.members, &o.name, &o.peer_url),
            },
            Some(m) if !c.linearizable => Plan::Wait(format!(
                "member {:x} has this peer URL but the data is gone; waiting for a member list confirmed with the leader before removing it",
                m.id
            )),
            Some(m) => Plan::RemoveStale {
                id: m.id,
                via: c.via.clone(),
            },
            None => {
                let learners: Vec<&Member> = c.members.iter().filter(|m| m.is_learner).collect();
                if learners.len() >= o.max_learners.max(1) {
                    let names: Vec<String> = learners
                        .iter()
                        .map(|m| {
                            if m.name.is_empty() {
                                m.peer_ur_ls.join(",")
                            } else {
                                m.name.clone()
                            }
                        })
                        .collect();
                    Plan::Wait(format!(
                        "the learner slot is taken by {}; waiting for its promotion",
                        names.join(", ")
                    ))
                } else {
                    Plan::AddLearner { via: c.via.clone() }
                }
            }
        },
    }
}

/// Why a member cannot start.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The plan says to stop.
    #[error("{0}")]
    Exit(String),
    /// The data directory could not be read or moved.
    #[error("data directory {path}: {reason}")]
    Data {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Reads one member list from the first member of the StatefulSet that answers: linearizable if
/// any member can confirm it, else the first serializable answer.
pub async fn observe_cluster(endpoints: &[String], opts: &ClientOptions) -> Option<ClusterView> {
    let mut fallback = None;
    for ep in endpoints {
        let client = match EtcdClient::connect(ep, opts).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(endpoint = %ep, error = %e, "member does not answer");
                continue;
            }
        };
        match client.member_list(true).await {
            Ok((cluster_id, members)) => {
                return Some(ClusterView {
                    via: ep.clone(),
                    cluster_id,
                    members,
                    linearizable: true,
                })
            }
            Err(ClientError::Rpc { message, .. }) => {
                tracing::debug!(endpoint = %ep, error = %message, "linearizable member list failed");
                if fallback.is_none() {
                    if let Ok((cluster_id, members)) = client.member_list(false).await {
                        fallback = Some(ClusterView {
                            via: ep.clone(),
                            cluster_id,
                            members,
                            linearizable: false,
                        });
                    }
                }
            }
            Err(e) => tracing::debug!(endpoint = %ep, error = %e, "member does not answer"),
        }
    }
    fallback
}

fn read_stored(data_dir: &Path) -> Result<Option<StoredMember>, JoinError> {
    crate::node::stored_identity(data_dir)
        .map(|o| {
            o.map(|id| StoredMember {
                member_id: id.member_id.0,
                cluster_id: id.cluster_id.0,
            })
        })
        .map_err(|e| JoinError::Data {
            path: data_dir.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Renames `data_dir` to `<data_dir>.removed-<unix seconds>` beside it, then deletes the older
/// `<data_dir>.removed-*` directories: a removed member's data can never rejoin its cluster (its
/// ID is gone), and each upgrade through the controller moves data aside once, so keeping every
/// copy would fill the volume. The newest copy stays for inspection.
fn move_aside(data_dir: &Path) -> Result<PathBuf, JoinError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut to = data_dir.as_os_str().to_owned();
    to.push(format!(".removed-{secs}"));
    let to = PathBuf::from(to);
    std::fs::rename(data_dir, &to).map_err(|e| JoinError::Data {
        path: data_dir.to_path_buf(),
        reason: format!("cannot move it aside to {}: {e}", to.display()),
    })?;
    for old in older_moved_aside(data_dir, &to) {
        match std::fs::remove_dir_all(&old) {
            Ok(()) => tracing::info!(path = %old.display(), "deleted older moved-aside data"),
            Err(e) => {
                tracing::warn!(path = %old.display(), error = %e, "cannot delete older moved-aside data")
            }
        }
    }
    Ok(to)
}

/// The `<data_dir>.removed-<digits>` directories beside `data_dir`, except `keep`.
fn older_moved_aside(data_dir: &Path, keep: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(base)) = (data_dir.parent(), data_dir.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.removed-", base.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix)
                .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .filter(|p| p != keep)
        .collect()
}

/// How the member starts, as decided by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// On its own data, with the settings it was given.
    OnData,
    /// As the first member of a new cluster.
    Bootstrap {
        /// `--initial-cluster`.
        initial_cluster: String,
    },
    /// As an added member of the running cluster.
    Join {
        /// `--initial-cluster`.
        initial_cluster: String,
    },
}

/// Observes and acts until this member knows how to start. Waits (with a log line for each new
/// reason, and again every 30 s) while no cluster answers or the learner slot is taken.
pub async fn prepare(
    id: &PodIdentity,
    data_dir: &Path,
    max_learners: usize,
    opts: &ClientOptions,
) -> Result<Start, JoinError> {
    let endpoints = id.other_client_urls();
    let peer_url = id.peer_url(id.ordinal);
    let mut last_reason = String::new();
    let mut last_logged = tokio::time::Instant::now();
    // Ordinal 0 with no data looks a few times before it creates a cluster: a running cluster
    // whose DNS names are still being published must not be mistaken for none.
    let mut empty_looks = 0u32;
    loop {
        let stored = read_stored(data_dir)?;
        if stored.is_none() && crate::node::db_path(data_dir).exists() {
            // A database without a saved identity: the first start crashed before it finished.
            let to = move_aside(data_dir)?;
            tracing::warn!(from = %data_dir.display(), to = %to.display(), "moved an unfinished data directory aside");
            continue;
        }
        let observed = Observed {
            name: id.pod.clone(),
            ordinal: id.ordinal,
            peer_url: peer_url.clone(),
            stored,
            cluster: observe_cluster(&endpoints, opts).await,
            max_learners,
            wanted: true,
        };
        let step = plan(&observed);
        let wait =
            |reason: String, last_reason: &mut String, last_logged: &mut tokio::time::Instant| {
                if *last_reason != reason || last_logged.elapsed() > Duration::from_secs(30) {
                    tracing::info!(pod = %id.pod, reason = %reason, "waiting to start");
                    *last_reason = reason;
                    *last_logged = tokio::time::Instant::now();
                }
            };
        match step {
            Plan::StartOnData => return Ok(Start::OnData),
            Plan::Bootstrap if empty_looks < 2 => {
                empty_looks += 1;
                wait(
                    "no member answers; looking again before creating a new cluster".to_string(),
                    &mut last_reason,
                    &mut last_logged,
                );
            }
            Plan::Bootstrap => {
                tracing::info!(pod = %id.pod, "no member answers: creating a new cluster");
                return Ok(Start::Bootstrap {
                    initial_cluster: format!("{}={peer_url}", id.pod),
                });
            }
            Plan::Join { initial_cluster } => {
                tracing::info!(pod = %id.pod, initial_cluster = %initial_cluster, "joining the running cluster");
                return Ok(Start::Join { initial_cluster });
            }
            Plan::AddLearner { via } => match add_learner(&via, &peer_url, opts).await {
                Ok(added) => {
                    tracing::info!(pod = %id.pod, member_id = %format!("{added:x}"), via = %via, "added as a learner");
                    continue;
                }
                Err(e) => wait(
                    format!("adding this member as a learner through {via} failed: {e}"),
                    &mut last_reason,
                    &mut last_logged,
                ),
            },
            Plan::RemoveStale { id: stale, via } => {
                let r = match EtcdClient::connect(&via, opts).await {
                    Ok(c) => c.member_remove(stale).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {
                        tracing::warn!(pod = %id.pod, member_id = %format!("{stale:x}"), "removed the entry of this member's lost data; adding it again as a learner");
                        continue;
                    }
                    Err(e) => wait(
                        format!("removing the stale entry {stale:x} through {via} failed: {e}"),
                        &mut last_reason,
                        &mut last_logged,
                    ),
                }
            }
            Plan::MoveAside => {
                let to = move_aside(data_dir)?;
                tracing::warn!(pod = %id.pod, from = %data_dir.display(), to = %to.display(), "this member was removed from the cluster; its data was moved aside and it joins again as a learner");
                continue;
            }
            Plan::Wait(reason) => wait(reason, &mut last_reason, &mut last_logged),
            Plan::Exit(reason) => return Err(JoinError::Exit(reason)),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn add_learner(via: &str, peer_url: &str, opts: &ClientOptions) -> Result<u64, ClientError> {
    let client = EtcdClient::connect(via, opts).await?;
    let (added, _) = client.member_add(vec![peer_url.to_string()], true).await?;
    Ok(added.id)
}

/// After the node started: while this member is a learner, asks the cluster to promote it; the
/// leader refuses until the learner is in sync, so it asks again every second. Returns once this
/// member is a voter.
pub async fn promote_self(
    id: &PodIdentity,
    member_id: u64,
    opts: &ClientOptions,
    extra_endpoints: &[String],
) {
    let mut endpoints = id.other_client_urls();
    endpoints.extend(extra_endpoints.iter().cloned());
    let mut last = String::new();
    loop {
        let reason = match observe_cluster(&endpoints, opts).await {
            None => "no voter answers".to_string(),
            Some(view) => match view.members.iter().find(|m| m.id == member_id) {
                Some(m) if !m.is_learner => {
                    tracing::info!(pod = %id.pod, "this member is a voter");
                    return;
                }
                None => "this member is not in the member list yet".to_string(),
                Some(_) => {
                    let r = match EtcdClient::connect(&view.via, opts).await {
                        Ok(c) => c.member_promote(member_id).await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(()) => {
                            tracing::info!(pod = %id.pod, member_id = %format!("{member_id:x}"), "promoted to voter");
                            return;
                        }
                        Err(e) => format!("promotion refused: {e}"),
                    }
                }
            },
        };
        if reason != last {
            tracing::info!(pod = %id.pod, reason = %reason, "learner not promoted yet");
            last = reason;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// With a root password: makes sure user `root` exists with role `root` and authentication is
/// on, through any member that answers (safe to run on every member; the first one does it).
pub async fn bootstrap_auth(id: &PodIdentity, own_endpoint: &str, opts: &ClientOptions) {
    let Some(password) = id.root_password.clone() else {
        return;
    };
    let mut opts = opts.clone();
    opts.user = Some(("root".to_string(), password.clone()));
    let mut endpoints = vec![own_endpoint.to_string()];
    endpoints.extend(id.other_client_urls());
    loop {
        for ep in &endpoints {
            let r = match EtcdClient::connect(ep, &opts).await {
                Ok(c) => c.enable_root_auth(&password).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(true) => {
                    tracing::info!(pod = %id.pod, "created user root and enabled authentication");
                    return;
                }
                Ok(false) => return,
                Err(e) => tracing::debug!(endpoint = %ep, error = %e, "auth bootstrap failed"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests;
