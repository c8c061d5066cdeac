//! The membership controller's loop: observe the StatefulSet, its pods and the members, decide
//! ([`super::reconcile::decide`]), make at most one change, report it.
//!
//! **Who acts.** Every member runs this loop, and only the member that is the raft leader acts:
//! each reconcile starts with this member's own `Status`, and a member that is not the leader
//! stops there. The leader is the one place that already serializes membership changes, so no
//! second election (a Kubernetes Lease) is needed, no controller can act for a cluster it cannot
//! reach, and the controller keeps working while the API server is slow. Two members may briefly
//! both believe they lead during an election; the membership change each would make goes through
//! raft, which only the real leader can commit, and a pod of a voter is deleted only after its
//! removal committed. The only other step, deleting the pod of a member that does not vote, costs
//! no quorum even when done twice.
//!
//! Invariants:
//! - Level-triggered: a reconcile reads everything anew (a linearizable member list, each
//!   member's `Status`, the StatefulSet, its pods) and keeps no state between reconciles but the
//!   last Event it wrote (to not repeat a refusal every few seconds).
//! - At most one membership change per reconcile; a failed step is reported and simply
//!   recomputed next time.
//! - On SIGTERM a member leaves the cluster only when the StatefulSet no longer wants its
//!   ordinal ([`Controller::leave_if_unwanted`]); a restarting pod never removes itself.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;

use super::client::{ClientError, ClientOptions, EtcdClient};
use super::identity::PodIdentity;
use super::kube_api::{KubeApi, KubeError, SetView};
use super::reconcile::{self, decide, Decision, MemberView, View};
use crate::proto::etcdserverpb::Member;

/// Why a reconcile could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Kubernetes API failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// A member failed.
    #[error("etcd API: {0}")]
    Etcd(#[from] ClientError),
    /// Status answered without a header.
    #[error("Status answered without a header")]
    NoHeader,
}

/// The membership controller of one member.
#[derive(Debug)]
pub struct Controller {
    kube: KubeApi,
    pod: PodIdentity,
    opts: ClientOptions,
    own_endpoint: String,
    interval: Duration,
    last_event: Mutex<Option<String>>,
}

/// What one reconcile saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The decision.
    pub decision: Decision,
    /// The action's error, when the decided action failed.
    pub failed: Option<String>,
}

impl Controller {
    /// A controller for the member serving `own_endpoint`, in `pod`'s StatefulSet.
    pub fn new(
        kube: KubeApi,
        pod: PodIdentity,
        opts: ClientOptions,
        own_endpoint: String,
        interval: Duration,
    ) -> Controller {
        Controller {
            kube,
            pod,
            opts,
            own_endpoint,
            interval,
            last_event: Mutex::new(None),
        }
    }

    /// The controller for this pod, unless `OXCD_CONTROLLER=false` or no Kubernetes API is
    /// configured (neither `OXCD_KUBE_API` nor an in-cluster service account, as under
    /// docker-compose: then members promote themselves, see [`super::join::promote_self`]).
    pub fn from_env(
        pod: &PodIdentity,
        opts: ClientOptions,
        own_endpoint: String,
    ) -> Option<Controller> {
        use super::identity::env;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if var(env::CONTROLLER).is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) {
            tracing::info!("membership controller turned off by {}", env::CONTROLLER);
            return None;
        }
        let api_url = var(env::KUBE_API);
        if api_url.is_none() && var("KUBERNETES_SERVICE_HOST").is_none() {
            tracing::info!("no Kubernetes API: membership controller off");
            return None;
        }
        let interval = var(env::CONTROLLER_INTERVAL)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(5));
        match KubeApi::connect(&pod.namespace, &pod.statefulset, api_url.as_deref()) {
            Ok(kube) => Some(Controller::new(
                kube,
                pod.clone(),
                opts,
                own_endpoint,
                interval,
            )),
            Err(e) => {
                tracing::warn!(error = %e, "membership controller off");
                None
            }
        }
    }

    /// The ordinal a member stands for: from its name, or for a member that has not started,
    /// from its peer URL's host (`<statefulset>-<ordinal>.<service>...`).
    fn ordinal_of(&self, m: &Member) -> Option<u32> {
        if !m.name.is_empty() {
            return self.pod.ordinal_of(&m.name);
        }
        m.peer_ur_ls.iter().find_map(|u| {
            let host = url::Url::parse(u).ok()?.host_str()?.to_string();
            self.pod.ordinal_of(host.split('.').next()?)
        })
    }

    /// Reads one member's Status: (healthy, applied index).
    async fn member_status(&self, m: &Member) -> (bool, u64) {
        let Some(url) = m.client_ur_ls.first() else {
            return (false, 0);
        };
        let mut opts = self.opts.clone();
        opts.timeout = opts.timeout.min(Duration::from_secs(2));
        let r = match EtcdClient::connect(url, &opts).await {
            Ok(c) => c.status().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(s) => (s.leader != 0 && s.errors.is_empty(), s.raft_applied_index),
            Err(e) => {
                tracing::debug!(member = %m.name, error = %e, "member status failed");
                (false, 0)
            }
        }
    }

    /// Observes everything the decision needs. `None` when this member is not the leader (it
    /// then reads nothing from Kubernetes).
    pub async fn observe(&self) -> Result<Option<(View, SetView)>, ControllerError> {
        let own = EtcdClient::connect(&self.own_endpoint, &self.opts).await?;
        let st = own.status().await?;
        let self_id = st
            .header
            .as_ref()
            .ok_or(ControllerError::NoHeader)?
            .member_id;
        if st.leader != self_id {
            return Ok(None);
        }
        let set = self.kube.statefulset().await?;
        let pods = self.kube.pods(&set.selector).await?;
        let (_, members) = own.member_list(true).await?;
        let mut views = Vec::with_capacity(members.len());
        for m in &members {
            let (healthy, applied) = if m.id == self_id {
                (st.errors.is_empty(), st.raft_applied_index)
            } else if m.name.is_empty() {
                (false, 0)
            } else {
                self.member_status(m).await
            };
            views.push(MemberView {
                id: m.id,
                name: m.name.clone(),
                ordinal: self.ordinal_of(m),
                learner: m.is_learner,
                healthy,
                applied,
            });
        }
        let metrics = crate::metrics::get();
        let learners = views.iter().filter(|m| m.learner).count();
        metrics
            .controller_members
            .with_label_values(&["voter"])
            .set((views.len() - learners) as i64);
        metrics
            .controller_members
            .with_label_values(&["learner"])
            .set(learners as i64);
        let view = View {
            desired: set.replicas,
            update_revision: set.update_revision.clone(),
            pods,
            members: views,
            leader: Some(st.leader),
            self_id,
            leader_index: st.raft_index,
        };
        Ok(Some((view, set)))
    }

    /// One reconcile: observe, decide, act, report.
    pub async fn reconcile(&self) -> Result<Reconciled, ControllerError> {
        let metrics = crate::metrics::get();
        metrics.controller_reconciles.inc();
        let Some((view, set)) = self.observe().await? else {
            return Ok(Reconciled {
                decision: Decision::NotLeader,
                failed: None,
            });
        };
        let decision = decide(&view);
        let failed = self.act(&decision).await.err().map(|e| e.to_string());
        self.report(&decision, failed.as_deref(), &set).await;
        Ok(Reconciled { decision, failed })
    }

    async fn act(&self, d: &Decision) -> Result<(), ControllerError> {
        let own = || EtcdClient::connect(&self.own_endpoint, &self.opts);
        let kind = match d {
            Decision::NotLeader | Decision::Idle(_) | Decision::Blocked(_) => return Ok(()),
            Decision::Promote { id, .. } => {
                own().await?.member_promote(*id).await?;
                "promote"
            }
            Decision::Remove { id, .. } => {
                match own().await?.member_remove(*id).await {
                    Err(e) if e.is("etcdserver: member not found") => {}
                    r => r?,
                }
                "remove"
            }
            Decision::MoveLeader { to, .. } => {
                own().await?.move_leader(*to).await?;
                "move_leader"
            }
            Decision::Upgrade { ordinal, member } => {
                if let Some(id) = member {
                    match own().await?.member_remove(*id).await {
                        Err(e) if e.is("etcdserver: member not found") => {}
                        r => r?,
                    }
                }
                self.kube.delete_pod(*ordinal).await?;
                "upgrade"
            }
        };
        crate::metrics::get()
            .controller_actions
            .with_label_values(&[kind])
            .inc();
        Ok(())
    }

    /// Logs the decision and writes an Event for every action and every new refusal.
    async fn report(&self, d: &Decision, failed: Option<&str>, set: &SetView) {
        let (reason, message, warning) = match (d, failed) {
            (_, Some(err)) => ("ReconcileFailed", format!("{}: {err}", describe(d)), true),
            (Decision::Blocked(why), None) => {
                crate::metrics::get()
                    .controller_blocked
                    .with_label_values(&[reconcile::blocked_kind(why)])
                    .inc();
                ("Blocked", why.clone(), true)
            }
            (Decision::Idle(why), None) => {
                tracing::debug!(reason = %why, "controller idle");
                *self.last_event.lock() = None;
                return;
            }
            (Decision::NotLeader, None) => return,
            (d, None) => (event_reason(d), describe(d), false),
        };
        if warning {
            tracing::warn!(reason, message = %message, "membership controller");
        } else {
            tracing::info!(reason, message = %message, "membership controller");
        }
        let key = format!("{reason}:{message}");
        if warning && self.last_event.lock().as_deref() == Some(key.as_str()) {
            return;
        }
        *self.last_event.lock() = Some(key);
        if let Err(e) = self
            .kube
            .event(set.uid.as_deref(), reason, &message, warning)
            .await
        {
            tracing::warn!(error = %e, "cannot record a Kubernetes event");
        }
    }

    /// Runs reconciles until `stop` resolves: every interval, and at once when the StatefulSet
    /// or a pod changes.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let selector = loop {
            match self.kube.statefulset().await {
                Ok(s) => break s.selector,
                Err(e) => {
                    tracing::warn!(error = %e, "controller: cannot read the StatefulSet yet");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(self.interval) => {}
                    }
                }
            }
        };
        tracing::info!(
            statefulset = %self.kube.statefulset_name(),
            selector = %selector,
            "membership controller running (it acts while this member leads)"
        );
        let changes = self.kube.changes(&selector);
        tokio::pin!(changes);
        loop {
            match self.reconcile().await {
                Ok(r) => tracing::debug!(decision = ?r.decision, "reconciled"),
                Err(e) => tracing::info!(error = %e, "reconcile failed; trying again"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.interval) => {}
                ev = changes.next() => {
                    if let Some(Err(e)) = ev {
                        tracing::debug!(error = %e, "watch");
                    }
                }
            }
        }
    }

    /// On graceful termination: leaves the cluster when the StatefulSet no longer wants this
    /// member's ordinal (scale-down), moving leadership away first when this member leads.
    /// Returns whether it left. A member whose ordinal is wanted (a restart, an upgrade, a
    /// rescheduled pod) stays a member; so does one that cannot read the StatefulSet (the
    /// controller removes it later if it is unwanted).
    pub async fn leave_if_unwanted(&self, budget: Duration) -> bool {
        match tokio::time::timeout(budget, self.leave_inner()).await {
            Ok(Ok(left)) => left,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "not leaving the cluster on shutdown");
                false
            }
            Err(_) => {
                tracing::warn!(
                    ?budget,
                    "leaving the cluster took too long; shutting down as a member"
                );
                false
            }
        }
    }

    async fn leave_inner(&self) -> Result<bool, ControllerError> {
        let set = self.kube.statefulset().await?;
        if self.pod.ordinal < set.replicas {
            tracing::info!(
                ordinal = self.pod.ordinal,
                replicas = set.replicas,
                "shutting down as a member: this ordinal is still wanted"
            );
            return Ok(false);
        }
        let own = EtcdClient::connect(&self.own_endpoint, &self.opts).await?;
        let self_id = own
            .status()
            .await?
            .header
            .as_ref()
            .ok_or(ControllerError::NoHeader)?
            .member_id;
        // Requests go through the wanted members first: this member may already be out of the
        // cluster (the controller removes unwanted ordinals too) and then has no leader.
        let mut endpoints: Vec<String> =
            (0..set.replicas).map(|o| self.pod.client_url(o)).collect();
        endpoints.push(self.own_endpoint.clone());
        let mut last_err = None;
        for attempt in 0..20u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut via = None;
            for ep in &endpoints {
                let r = match EtcdClient::connect(ep, &self.opts).await {
                    Ok(c) => c.member_list(true).await.map(|(_, m)| (c, m)),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(x) => {
                        via = Some(x);
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let Some((client, members)) = via else {
                continue;
            };
            if !members.iter().any(|m| m.id == self_id) {
                tracing::info!("this member is no longer in the cluster");
                return Ok(true);
            }
            if own.status().await.is_ok_and(|st| st.leader == self_id) {
                let target = members.iter().find(|m| {
                    m.id != self_id
                        && !m.is_learner
                        && self.ordinal_of(m).is_some_and(|o| o < set.replicas)
                });
                if let Some(t) = target {
                    tracing::info!(to = %t.name, "moving leadership away before leaving");
                    if let Err(e) = own.move_leader(t.id).await {
                        last_err = Some(e);
                    }
                    continue;
                }
            }
            match client.member_remove(self_id).await {
                Ok(()) => {
                    tracing::info!(
                        ordinal = self.pod.ordinal,
                        replicas = set.replicas,
                        "left the cluster: this ordinal is no longer wanted"
                    );
                    crate::metrics::get()
                        .controller_actions
                        .with_label_values(&["leave"])
                        .inc();
                    let msg = format!(
                        "{} left the cluster on shutdown: ordinal {} is not wanted (replicas {})",
                        self.pod.pod, self.pod.ordinal, set.replicas
                    );
                    if let Err(e) = self
                        .kube
                        .event(set.uid.as_deref(), "MemberLeft", &msg, false)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record a Kubernetes event");
                    }
                    return Ok(true);
                }
                Err(e) if e.is("etcdserver: member not found") => return Ok(true),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .map(ControllerError::Etcd)
            .unwrap_or(ControllerError::NoHeader))
    }
}

fn event_reason(d: &Decision) -> &'static str {
    match d {
        Decision::Promote { .. } => "MemberPromoted",
        Decision::Remove { .. } => "MemberRemoved",
        Decision::MoveLeader { .. } => "LeaderMoved",
        Decision::Upgrade { .. } => "MemberUpgrading",
        Decision::Blocked(_) => "Blocked",
        Decision::Idle(_) | Decision::NotLeader => "Idle",
    }
}

/// A sentence for logs and Events.
pub fn describe(d: &Decision) -> String {
    match d {
        Decision::NotLeader => "not the leader".to_string(),
        Decision::Idle(why) | Decision::Blocked(why) => why.clone(),
        Decision::Promote { id, name } => {
            format!("promoted learner {name} ({id:x}): it is in sync with the leader")
        }
        Decision::Remove { id, name, reason } => format!("removed member {name} ({id:x}): {reason}"),
        Decision::MoveLeader {
            to, to_name, reason, ..
        } => format!("moved leadership to {to_name} ({to:x}): {reason}"),
        Decision::Upgrade {
            ordinal,
            member: Some(id),
        } => format!(
            "upgrading ordinal {ordinal}: removed its member {id:x} (it rejoins as a learner) and deleted its pod"
        ),
        Decision::Upgrade {
            ordinal,
            member: None,
        } => format!("upgrading ordinal {ordinal}: deleted its pod"),
    }
}
