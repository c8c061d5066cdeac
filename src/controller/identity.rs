//! A member's identity from its StatefulSet pod: name, advertised URLs and cluster token derived
//! from `<pod>.<headless>.<namespace>.svc.<domain>`.
//!
//! Invariants: the derivation is a pure function of the environment the chart sets (tested as a
//! table); it only supplies defaults, layered under the config file, `ETCD_*` variables and flags
//! ([`crate::config::Config::load_over`]), so etcd's own settings still override every value.

use std::collections::BTreeMap;

/// Why the pod environment cannot be turned into an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The pod name does not end in `-<ordinal>`.
    #[error("OXCD_POD_NAME {0:?} does not end in -<ordinal> (a StatefulSet pod name)")]
    NoOrdinal(String),
    /// A variable holds a value that cannot be used.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

/// The environment variables the chart sets on every member (see `charts/oxcd`).
pub mod env {
    /// The pod's name, `<statefulset>-<ordinal>` (downward API `metadata.name`).
    pub const POD_NAME: &str = "OXCD_POD_NAME";
    /// The pod's namespace (downward API `metadata.namespace`).
    pub const POD_NAMESPACE: &str = "OXCD_POD_NAMESPACE";
    /// The StatefulSet's name (default: the pod name without its ordinal).
    pub const STATEFULSET: &str = "OXCD_STATEFULSET";
    /// The headless service that gives each pod its DNS name.
    pub const HEADLESS_SERVICE: &str = "OXCD_HEADLESS_SERVICE";
    /// The cluster's DNS domain (default `cluster.local`).
    pub const CLUSTER_DOMAIN: &str = "OXCD_CLUSTER_DOMAIN";
    /// The Helm release; the cluster token is `<release>-<namespace>`.
    pub const RELEASE: &str = "OXCD_RELEASE";
    /// The replicas the chart was rendered with: the ordinals probed for a running cluster.
    pub const REPLICAS: &str = "OXCD_REPLICAS";
    /// `http` or `https` for client URLs.
    pub const CLIENT_SCHEME: &str = "OXCD_CLIENT_SCHEME";
    /// `http` or `https` for peer URLs.
    pub const PEER_SCHEME: &str = "OXCD_PEER_SCHEME";
    /// The client port (default 2379).
    pub const CLIENT_PORT: &str = "OXCD_CLIENT_PORT";
    /// The peer port (default 2380).
    pub const PEER_PORT: &str = "OXCD_PEER_PORT";
    /// The root password, when the chart turns authentication on.
    pub const ROOT_PASSWORD: &str = "OXCD_ROOT_PASSWORD";
    /// `false` turns the membership controller off (default: on whenever a Kubernetes API is
    /// configured).
    pub const CONTROLLER: &str = "OXCD_CONTROLLER";
    /// The Kubernetes API URL to use instead of the in-cluster service account (plain, no
    /// credentials: `kubectl proxy`, or a test's API server).
    pub const KUBE_API: &str = "OXCD_KUBE_API";
    /// Seconds between two reconciles when nothing changes (default 5).
    pub const CONTROLLER_INTERVAL: &str = "OXCD_CONTROLLER_INTERVAL";
}

/// Who this member is inside its StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod name, which is also the member name.
    pub pod: String,
    /// The pod's ordinal.
    pub ordinal: u32,
    /// The namespace.
    pub namespace: String,
    /// The StatefulSet's name.
    pub statefulset: String,
    /// The headless service.
    pub headless: String,
    /// The cluster DNS domain; empty means names end in `.svc`.
    pub domain: String,
    /// The Helm release (or the StatefulSet's name without one).
    pub release: String,
    /// Replicas at render time.
    pub replicas: u32,
    /// `http` or `https`.
    pub client_scheme: String,
    /// `http` or `https`.
    pub peer_scheme: String,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Root password for an authenticated cluster.
    pub root_password: Option<String>,
}

fn scheme(var: &'static str, v: Option<String>) -> Result<String, IdentityError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok("http".to_string()),
        Some(s @ ("http" | "https")) => Ok(s.to_string()),
        Some(other) => Err(IdentityError::Invalid {
            var,
            value: other.to_string(),
            reason: "must be http or https",
        }),
    }
}

fn number<T: std::str::FromStr>(
    var: &'static str,
    v: Option<String>,
    default: T,
) -> Result<T, IdentityError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some(s) => s.parse().map_err(|_| IdentityError::Invalid {
            var,
            value: s.to_string(),
            reason: "must be a number",
        }),
    }
}

impl PodIdentity {
    /// Reads the identity from the environment through `get`; `Ok(None)` when `OXCD_POD_NAME` is
    /// not set (not running in a StatefulSet).
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<PodIdentity>, IdentityError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let Some(pod) = non_empty(env::POD_NAME) else {
            return Ok(None);
        };
        let pod = pod.trim().to_string();
        let (base, ordinal) = pod
            .rsplit_once('-')
            .and_then(|(b, n)| n.parse::<u32>().ok().map(|n| (b.to_string(), n)))
            .filter(|(b, _)| !b.is_empty())
            .ok_or_else(|| IdentityError::NoOrdinal(pod.clone()))?;
        let statefulset = non_empty(env::STATEFULSET).unwrap_or(base);
        if !pod.starts_with(&format!("{statefulset}-")) {
            return Err(IdentityError::Invalid {
                var: env::STATEFULSET,
                value: statefulset,
                reason: "the pod name must be <statefulset>-<ordinal>",
            });
        }
        let namespace = non_empty(env::POD_NAMESPACE).unwrap_or_else(|| "default".to_string());
        let headless =
            non_empty(env::HEADLESS_SERVICE).unwrap_or_else(|| format!("{statefulset}-headless"));
        let domain = get(env::CLUSTER_DOMAIN)
            .map(|d| d.trim().trim_matches('.').to_string())
            .unwrap_or_else(|| "cluster.local".to_string());
        let release = non_empty(env::RELEASE).unwrap_or_else(|| statefulset.clone());
        let replicas = number(env::REPLICAS, get(env::REPLICAS), 1u32)?;
        Ok(Some(PodIdentity {
            pod,
            ordinal,
            namespace,
            statefulset,
            headless,
            domain,
            release,
            replicas,
            client_scheme: scheme(env::CLIENT_SCHEME, get(env::CLIENT_SCHEME))?,
            peer_scheme: scheme(env::PEER_SCHEME, get(env::PEER_SCHEME))?,
            client_port: number(env::CLIENT_PORT, get(env::CLIENT_PORT), 2379u16)?,
            peer_port: number(env::PEER_PORT, get(env::PEER_PORT), 2380u16)?,
            root_password: get(env::ROOT_PASSWORD).filter(|p| !p.is_empty()),
        }))
    }

    /// Reads the identity from the process environment.
    pub fn from_process_env() -> Result<Option<PodIdentity>, IdentityError> {
        PodIdentity::from_env(|k| std::env::var(k).ok())
    }

    /// The pod name of `ordinal`.
    pub fn pod_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.statefulset)
    }

    /// The stable DNS name of `ordinal`: `<pod>.<headless>.<namespace>.svc.<domain>`.
    pub fn host(&self, ordinal: u32) -> String {
        let mut h = format!(
            "{}.{}.{}.svc",
            self.pod_name(ordinal),
            self.headless,
            self.namespace
        );
        if !self.domain.is_empty() {
            h.push('.');
            h.push_str(&self.domain);
        }
        h
    }

    /// The client URL of `ordinal`.
    pub fn client_url(&self, ordinal: u32) -> String {
        format!(
            "{}://{}:{}",
            self.client_scheme,
            self.host(ordinal),
            self.client_port
        )
    }

    /// The peer URL of `ordinal`.
    pub fn peer_url(&self, ordinal: u32) -> String {
        format!(
            "{}://{}:{}",
            self.peer_scheme,
            self.host(ordinal),
            self.peer_port
        )
    }

    /// The cluster token: `<release>-<namespace>`, so two releases never share member IDs.
    pub fn token(&self) -> String {
        format!("{}-{}", self.release, self.namespace)
    }

    /// The ordinal a member name (a pod name of this StatefulSet) stands for.
    pub fn ordinal_of(&self, name: &str) -> Option<u32> {
        name.strip_prefix(&format!("{}-", self.statefulset))
            .and_then(|n| n.parse().ok())
    }

    /// The client URLs of the other ordinals to look for a running cluster at: every ordinal the
    /// chart asked for, and every ordinal below this one.
    pub fn other_client_urls(&self) -> Vec<String> {
        (0..self.replicas.max(self.ordinal + 1))
            .filter(|o| *o != self.ordinal)
            .map(|o| self.client_url(o))
            .collect()
    }

    /// The settings this identity supplies, by etcd name, to layer under the user's.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("name".to_string(), self.pod.clone());
        m.insert(
            "initial-advertise-peer-urls".to_string(),
            self.peer_url(self.ordinal),
        );
        m.insert(
            "advertise-client-urls".to_string(),
            self.client_url(self.ordinal),
        );
        m.insert(
            "listen-client-urls".to_string(),
            format!("{}://0.0.0.0:{}", self.client_scheme, self.client_port),
        );
        m.insert(
            "listen-peer-urls".to_string(),
            format!("{}://0.0.0.0:{}", self.peer_scheme, self.peer_port),
        );
        m.insert("initial-cluster-token".to_string(), self.token());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Option<PodIdentity>, IdentityError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodIdentity::from_env(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn no_pod_name_means_no_identity() {
        assert_eq!(from(&[]), Ok(None));
        assert_eq!(from(&[(env::POD_NAME, " ")]), Ok(None));
    }

    #[test]
    fn chart_environment_gives_names_urls_and_token() {
        let id = from(&[
            (env::POD_NAME, "db-oxcd-2"),
            (env::POD_NAMESPACE, "prod"),
            (env::STATEFULSET, "db-oxcd"),
            (env::HEADLESS_SERVICE, "db-oxcd-headless"),
            (env::CLUSTER_DOMAIN, "cluster.local"),
            (env::RELEASE, "db"),
            (env::REPLICAS, "3"),
            (env::PEER_SCHEME, "https"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(id.ordinal, 2);
        assert_eq!(id.token(), "db-prod");
        let s = id.settings();
        assert_eq!(s["name"], "db-oxcd-2");
        assert_eq!(
            s["initial-advertise-peer-urls"],
            "https://db-oxcd-2.db-oxcd-headless.prod.svc.cluster.local:2380"
        );
        assert_eq!(
            s["advertise-client-urls"],
            "http://db-oxcd-2.db-oxcd-headless.prod.svc.cluster.local:2379"
        );
        assert_eq!(s["listen-peer-urls"], "https://0.0.0.0:2380");
        assert_eq!(s["initial-cluster-token"], "db-prod");
        assert_eq!(
            id.other_client_urls(),
            vec![
                "http://db-oxcd-0.db-oxcd-headless.prod.svc.cluster.local:2379",
                "http://db-oxcd-1.db-oxcd-headless.prod.svc.cluster.local:2379",
            ]
        );
        assert_eq!(id.ordinal_of("db-oxcd-7"), Some(7));
        assert_eq!(id.ordinal_of("other-7"), None);
    }

    #[test]
    fn defaults_from_the_pod_name_alone() {
        let id = from(&[(env::POD_NAME, "oxcd-4"), (env::CLUSTER_DOMAIN, "")])
            .unwrap()
            .unwrap();
        assert_eq!(id.statefulset, "oxcd");
        assert_eq!(id.headless, "oxcd-headless");
        assert_eq!(id.host(4), "oxcd-4.oxcd-headless.default.svc");
        assert_eq!(id.token(), "oxcd-default");
        // Ordinals below this one are probed even when the rendered replicas are fewer.
        assert_eq!(id.other_client_urls().len(), 4);
    }

    #[test]
    fn bad_values_are_refused_with_the_variable() {
        assert_eq!(
            from(&[(env::POD_NAME, "oxcd")]),
            Err(IdentityError::NoOrdinal("oxcd".to_string()))
        );
        assert!(matches!(
            from(&[(env::POD_NAME, "oxcd-0"), (env::STATEFULSET, "other")]),
            Err(IdentityError::Invalid {
                var: env::STATEFULSET,
                ..
            })
        ));
        assert!(matches!(
            from(&[(env::POD_NAME, "oxcd-0"), (env::CLIENT_SCHEME, "ftp")]),
            Err(IdentityError::Invalid {
                var: env::CLIENT_SCHEME,
                ..
            })
        ));
        assert!(matches!(
            from(&[(env::POD_NAME, "oxcd-0"), (env::REPLICAS, "three")]),
            Err(IdentityError::Invalid {
                var: env::REPLICAS,
                ..
            })
        ));
    }
}
