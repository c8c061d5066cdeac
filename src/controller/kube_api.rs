//! The controller's view of Kubernetes: its own StatefulSet, that StatefulSet's pods, pod deletes
//! and Events. The only place oxcd uses `kube` and `k8s-openapi`.
//!
//! Invariants:
//! - Only the member's own StatefulSet and its pods are touched, in the pod's namespace: the
//!   StatefulSet by name (get, and list/watch with a `metadata.name` field selector, which is
//!   what a Role restricted by `resourceNames` allows), pods by the StatefulSet's selector.
//! - Every request has a deadline; an API error is returned, never retried here (the reconcile
//!   loop is level-triggered and simply tries again).
//! - A pod delete of a pod that is already gone succeeds; an Event that cannot be written is
//!   logged and otherwise ignored (Events are for people, not for correctness).

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};

use super::reconcile::PodView;

/// The component name on the Events the controller writes.
pub const COMPONENT: &str = "oxcd-controller";

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Kubernetes request failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No API server configuration (not in a pod, and no `OXCD_KUBE_API`).
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    /// The API server answered with an error or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(String),
    /// The request took longer than its deadline.
    #[error("Kubernetes API: no answer within {0:?}")]
    Timeout(Duration),
    /// The StatefulSet lacks what the controller needs.
    #[error("StatefulSet {0}: {1}")]
    Invalid(String, String),
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        KubeError::Api(e.to_string())
    }
}

/// What the controller reads from its StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    /// `spec.replicas` (1 when unset, as Kubernetes defaults it).
    pub replicas: u32,
    /// `status.updateRevision` when `spec.updateStrategy.type` is `OnDelete`: then rolling the
    /// pods to it is the controller's job. `None` with `RollingUpdate`.
    pub update_revision: Option<String>,
    /// `spec.selector.matchLabels` as a label selector.
    pub selector: String,
    /// `metadata.uid`, for the Events' involved object.
    pub uid: Option<String>,
}

/// A Kubernetes API client scoped to one StatefulSet.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
    namespace: String,
    statefulset: String,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("namespace", &self.namespace)
            .field("statefulset", &self.statefulset)
            .finish()
    }
}

async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r.map_err(KubeError::from),
        Err(_) => Err(KubeError::Timeout(REQUEST_TIMEOUT)),
    }
}

impl KubeApi {
    /// A client for `statefulset` in `namespace`: against `api_url` when given (plain URL, no
    /// credentials: for tests and for `kubectl proxy`), else from the pod's in-cluster service
    /// account.
    pub fn connect(
        namespace: &str,
        statefulset: &str,
        api_url: Option<&str>,
    ) -> Result<KubeApi, KubeError> {
        let mut config = match api_url {
            Some(url) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| KubeError::Config(format!("{url}: {e}")))?;
                let plain = uri.scheme_str() == Some("http");
                let mut c = kube::Config::new(uri);
                if plain {
                    // No TLS on this connection: an empty trust store, so building the client
                    // does not need the system's CA certificates (the image has none).
                    c.root_cert = Some(Vec::new());
                }
                c
            }
            None => kube::Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?,
        };
        config.default_namespace = namespace.to_string();
        config.read_timeout = Some(Duration::from_secs(300));
        config.connect_timeout = Some(Duration::from_secs(5));
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeApi::from_client(client, namespace, statefulset))
    }

    /// A client over an existing `kube::Client` (tests give one over a mocked service).
    pub fn from_client(client: kube::Client, namespace: &str, statefulset: &str) -> KubeApi {
        KubeApi {
            client,
            namespace: namespace.to_string(),
            statefulset: statefulset.to_string(),
        }
    }

    /// The StatefulSet's name.
    pub fn statefulset_name(&self) -> &str {
        &self.statefulset
    }

    fn sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads the StatefulSet.
    pub async fn statefulset(&self) -> Result<SetView, KubeError> {
        let sts = timed(self.sets().get(&self.statefulset)).await?;
        set_view(&sts)
    }

    /// The pods matching `selector` that belong to this StatefulSet (by name `<sts>-<ordinal>`).
    pub async fn pods(&self, selector: &str) -> Result<Vec<PodView>, KubeError> {
        let list = timed(
            self.pods_api()
                .list(&ListParams::default().labels(selector)),
        )
        .await?;
        let mut pods: Vec<PodView> = list
            .items
            .iter()
            .filter_map(|p| pod_view(&self.statefulset, p))
            .collect();
        pods.sort_by_key(|p| p.ordinal);
        Ok(pods)
    }

    /// Deletes a pod (the StatefulSet controller recreates it from its update revision). A pod
    /// that is already gone counts as deleted.
    pub async fn delete_pod(&self, ordinal: u32) -> Result<(), KubeError> {
        let name = format!("{}-{ordinal}", self.statefulset);
        let r = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.pods_api().delete(&name, &DeleteParams::default()),
        )
        .await
        .map_err(|_| KubeError::Timeout(REQUEST_TIMEOUT))?;
        match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records an Event on the StatefulSet: `warning` for refusals and failures.
    pub async fn event(
        &self,
        uid: Option<&str>,
        reason: &str,
        message: &str,
        warning: bool,
    ) -> Result<(), KubeError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let ev = event_object(
            &self.namespace,
            &self.statefulset,
            uid,
            reason,
            message,
            warning,
        );
        timed(api.create(&PostParams::default(), &ev)).await?;
        Ok(())
    }

    /// A stream that yields whenever the StatefulSet or one of its pods changes (and after each
    /// relist). Errors are yielded too; the watch resumes by itself.
    pub fn changes(&self, selector: &str) -> impl Stream<Item = Result<(), KubeError>> + Send {
        let sets = watcher(
            self.sets(),
            watcher::Config::default().fields(&format!("metadata.name={}", self.statefulset)),
        )
        .default_backoff()
        .map(|r| r.map(|_| ()).map_err(|e| KubeError::Api(e.to_string())));
        let pods = watcher(self.pods_api(), watcher::Config::default().labels(selector))
            .default_backoff()
            .map(|r| r.map(|_| ()).map_err(|e| KubeError::Api(e.to_string())));
        futures::stream::select(sets, pods)
    }
}

/// The parts of a StatefulSet the controller uses.
pub fn set_view(sts: &StatefulSet) -> Result<SetView, KubeError> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts
        .spec
        .as_ref()
        .ok_or_else(|| KubeError::Invalid(name.clone(), "no spec".to_string()))?;
    let labels = spec.selector.match_labels.clone().unwrap_or_default();
    if labels.is_empty() {
        return Err(KubeError::Invalid(
            name,
            "spec.selector.matchLabels is empty".to_string(),
        ));
    }
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let update_revision = if on_delete {
        sts.status.as_ref().and_then(|s| s.update_revision.clone())
    } else {
        None
    };
    Ok(SetView {
        replicas: spec.replicas.unwrap_or(1).max(0) as u32,
        update_revision,
        selector,
        uid: sts.metadata.uid.clone(),
    })
}

/// A pod of `statefulset` as the decision sees it; `None` for a pod of another name.
pub fn pod_view(statefulset: &str, pod: &Pod) -> Option<PodView> {
    let name = pod.metadata.name.as_deref()?;
    let ordinal: u32 = name
        .strip_prefix(statefulset)?
        .strip_prefix('-')?
        .parse()
        .ok()?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let revision = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash").cloned());
    Some(PodView {
        ordinal,
        ready,
        revision,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// The Event object for an action or refusal on the StatefulSet.
pub fn event_object(
    namespace: &str,
    statefulset: &str,
    uid: Option<&str>,
    reason: &str,
    message: &str,
    warning: bool,
) -> Event {
    let now = Timestamp::now();
    let suffix = format!("{:x}", rand::random::<u64>());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{statefulset}.{suffix}")),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("apps/v1".to_string()),
            kind: Some("StatefulSet".to_string()),
            name: Some(statefulset.to_string()),
            namespace: Some(namespace.to_string()),
            uid: uid.map(str::to_string),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(reason.to_string()),
        reporting_component: Some(COMPONENT.to_string()),
        reporting_instance: Some(
            std::env::var(super::identity::env::POD_NAME).unwrap_or_else(|_| COMPONENT.to_string()),
        ),
        source: Some(EventSource {
            component: Some(COMPONENT.to_string()),
            host: None,
        }),
        ..Event::default()
    }
}
