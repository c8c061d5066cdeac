//! Configuration with etcd's names: defaults, then a `--config-file` (etcd's YAML keys), then
//! `ETCD_*` (and `OXCD_*`) environment variables, then command-line flags.
//!
//! Invariants: [`Config::validate`] checks everything before the data directory is touched, and
//! every error names the setting and the value; every setting keeps etcd's meaning and default
//! (except the data directory, `<name>.oxcd` where etcd uses `<name>.etcd`).

mod de;
pub mod etcd_names;
mod flags;
mod parse;
pub mod tls_opts;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use flags::{
    translate_args, ClientFlags, Command, EndpointCommand, Flags, SnapshotCommand, SETTINGS,
};
use parse::{
    https_flags, listen_addrs, non_empty, parse_auto_compaction, parse_initial_cluster, url_list,
};
pub use parse::{parse_duration, TlsSettings};

/// A configuration error; the process prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting could not be read (wrong type, bad YAML).
    #[error("{0}")]
    Load(String),
    /// The config file does not exist.
    #[error("cannot read config file {0}: no such file")]
    MissingFile(PathBuf),
    /// A setting has an invalid value.
    #[error("invalid value {value:?} for --{flag}: {reason}")]
    Invalid {
        /// The flag name.
        flag: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Names where a bad value came from, the way the user wrote it: `ETCD_MAX_TXN_OPS`, the config
/// file's key, or the flag.
fn load_error(e: figment::Error) -> ConfigError {
    let key = e.path.join(".").to_ascii_lowercase();
    let source = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    let place = if source.contains("environment variable") {
        let prefix = source.split('`').nth(1).unwrap_or("ETCD_");
        format!("{prefix}{}", key.to_ascii_uppercase().replace('-', "_"))
    } else if let Some(figment::Source::File(path)) =
        e.metadata.as_ref().and_then(|m| m.source.as_ref())
    {
        format!("{key} in {}", path.display())
    } else if key.is_empty() {
        return ConfigError::Load(e.to_string());
    } else {
        format!("--{key}")
    };
    ConfigError::Load(format!("{place}: {}", e.kind))
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Every setting, as etcd names them (YAML keys and flags in kebab case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Config {
    /// Human-readable member name.
    #[serde(deserialize_with = "de::string")]
    pub name: String,
    /// Data directory; empty means `<name>.oxcd`.
    #[serde(deserialize_with = "de::string")]
    pub data_dir: String,
    /// Comma-separated URLs to serve clients on.
    #[serde(deserialize_with = "de::string")]
    pub listen_client_urls: String,
    /// `--listen-metrics-urls`.
    pub listen_metrics_urls: String,
    /// `--experimental-enable-distributed-tracing`.
    #[serde(deserialize_with = "de::boolean")]
    pub experimental_enable_distributed_tracing: bool,
    /// `--experimental-distributed-tracing-address`.
    #[serde(deserialize_with = "de::string")]
    pub experimental_distributed_tracing_address: String,
    /// `--experimental-distributed-tracing-service-name`.
    #[serde(deserialize_with = "de::string")]
    pub experimental_distributed_tracing_service_name: String,
    /// `--experimental-distributed-tracing-instance-id`.
    #[serde(deserialize_with = "de::string")]
    pub experimental_distributed_tracing_instance_id: String,
    /// `--experimental-distributed-tracing-sampling-rate` (per million).
    #[serde(deserialize_with = "de::u64")]
    pub experimental_distributed_tracing_sampling_rate: u64,
    /// `--cert-file`.
    #[serde(deserialize_with = "de::string")]
    pub cert_file: String,
    /// `--key-file`.
    #[serde(deserialize_with = "de::string")]
    pub key_file: String,
    /// `--trusted-ca-file`.
    #[serde(deserialize_with = "de::string")]
    pub trusted_ca_file: String,
    /// `--client-cert-auth`.
    #[serde(deserialize_with = "de::boolean")]
    pub client_cert_auth: bool,
    /// `--auto-tls`.
    #[serde(deserialize_with = "de::boolean")]
    pub auto_tls: bool,
    /// `--peer-cert-file`.
    #[serde(deserialize_with = "de::string")]
    pub peer_cert_file: String,
    /// `--peer-key-file`.
    #[serde(deserialize_with = "de::string")]
    pub peer_key_file: String,
    /// `--peer-trusted-ca-file`.
    #[serde(deserialize_with = "de::string")]
    pub peer_trusted_ca_file: String,
    /// `--peer-client-cert-auth`.
    #[serde(deserialize_with = "de::boolean")]
    pub peer_client_cert_auth: bool,
    /// `--peer-auto-tls`.
    #[serde(deserialize_with = "de::boolean")]
    pub peer_auto_tls: bool,
    /// `--self-signed-cert-validity` in years.
    #[serde(deserialize_with = "de::u64")]
    pub self_signed_cert_validity: u64,
    /// `--cipher-suites`, comma-separated.
    #[serde(deserialize_with = "de::string")]
    pub cipher_suites: String,
    /// `--tls-min-version`.
    #[serde(deserialize_with = "de::string")]
    pub tls_min_version: String,
    /// `--tls-max-version`.
    #[serde(deserialize_with = "de::string")]
    pub tls_max_version: String,
    /// `--client-crl-file`.
    #[serde(deserialize_with = "de::string")]
    pub client_crl_file: String,
    /// `--peer-crl-file`.
    #[serde(deserialize_with = "de::string")]
    pub peer_crl_file: String,
    /// Comma-separated client URLs advertised to the cluster.
    #[serde(deserialize_with = "de::string")]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to serve peers on.
    #[serde(deserialize_with = "de::string")]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs advertised to the cluster.
    #[serde(deserialize_with = "de::string")]
    pub initial_advertise_peer_urls: String,
    /// `name=peerURL,...` of the initial members; empty means this member alone.
    #[serde(deserialize_with = "de::string")]
    pub initial_cluster: String,
    /// `new` or `existing`.
    #[serde(deserialize_with = "de::string")]
    pub initial_cluster_state: String,
    /// Token that makes member and cluster IDs unique to a cluster.
    #[serde(deserialize_with = "de::string")]
    pub initial_cluster_token: String,
    /// Largest request a client may send, in bytes.
    #[serde(deserialize_with = "de::u64")]
    pub max_request_bytes: u64,
    /// Most operations in one transaction.
    #[serde(deserialize_with = "de::u64")]
    pub max_txn_ops: u64,
    /// Backend size quota in bytes (0 means the default 2 GiB).
    #[serde(deserialize_with = "de::i64")]
    pub quota_backend_bytes: i64,
    /// `periodic` or `revision`.
    #[serde(deserialize_with = "de::string")]
    pub auto_compaction_mode: String,
    /// Hours or a duration (`periodic`), or a revision count (`revision`); "0" disables.
    #[serde(deserialize_with = "de::string")]
    pub auto_compaction_retention: String,
    /// `debug`, `info`, `warn`, `error`, `panic` or `fatal`.
    #[serde(deserialize_with = "de::string")]
    pub log_level: String,
    /// `zap` (structured JSON, etcd's default).
    #[serde(deserialize_with = "de::string")]
    pub logger: String,
    /// `default`, `stderr`, `stdout` or file paths, comma-separated.
    #[serde(deserialize_with = "de::string")]
    pub log_outputs: String,
    /// Heartbeat interval in milliseconds.
    #[serde(deserialize_with = "de::u64")]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[serde(deserialize_with = "de::u64")]
    pub election_timeout: u64,
    /// Applied entries between snapshots.
    #[serde(deserialize_with = "de::u64")]
    pub snapshot_count: u64,
    /// Most learners at once.
    #[serde(deserialize_with = "de::u64")]
    pub max_learners: u64,
    /// Refuse membership changes that would cost quorum.
    #[serde(deserialize_with = "de::boolean")]
    pub strict_reconfig_check: bool,
    /// Pre-vote before campaigning.
    #[serde(deserialize_with = "de::boolean")]
    pub pre_vote: bool,
    /// Period of watch progress notifications (a Go duration such as `10m`).
    #[serde(deserialize_with = "de::string")]
    pub watch_progress_notify_interval: String,
    /// Whether the leader checkpoints remaining lease TTLs through the log.
    #[serde(deserialize_with = "de::boolean")]
    pub experimental_enable_lease_checkpoint: bool,
    /// How often the leader checkpoints remaining lease TTLs (a Go duration).
    #[serde(deserialize_with = "de::string")]
    pub experimental_lease_checkpoint_interval: String,
    /// How often the leader checks members' hashes for corruption (a Go duration; 0 disables).
    #[serde(deserialize_with = "de::string")]
    pub experimental_corrupt_check_time: String,
    /// Whether a starting member compares its hash with its peers' before serving.
    #[serde(deserialize_with = "de::boolean")]
    pub experimental_initial_corrupt_check: bool,
    /// etcd 3.6's feature gates, `Name=bool,...`.
    #[serde(deserialize_with = "de::string")]
    pub feature_gates: String,
    /// Warnings to log once logging is up (etcd names accepted without effect).
    #[serde(skip)]
    pub notices: Vec<String>,
    /// Most stored revisions a compaction deletes per write (0: all in one).
    #[serde(deserialize_with = "de::u64")]
    pub experimental_compaction_batch_limit: u64,
    /// Committed but unapplied raft entries above which proposals are refused.
    #[serde(deserialize_with = "de::u64")]
    pub max_apply_backlog: u64,
    /// Token type: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`.
    #[serde(deserialize_with = "de::string")]
    pub auth_token: String,
    /// Seconds a simple token lives after its last use.
    #[serde(deserialize_with = "de::u64")]
    pub auth_token_ttl: u64,
    /// `--enable-pprof`.
    #[serde(deserialize_with = "de::boolean")]
    pub enable_pprof: bool,
    /// `--cors`: `*` or comma-separated origins.
    #[serde(deserialize_with = "de::string")]
    pub cors: String,
    /// `--host-whitelist`: `*` or comma-separated host names.
    #[serde(deserialize_with = "de::string")]
    pub host_whitelist: String,
    /// bcrypt cost of password hashes (4 to 31).
    #[serde(deserialize_with = "de::u64")]
    pub bcrypt_cost: u64,
    /// Accepted for etcd compatibility (needs checkpointing on): checkpoints are always persisted.
    #[serde(deserialize_with = "de::boolean")]
    pub experimental_enable_lease_checkpoint_persist: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".to_string(),
            data_dir: String::new(),
            listen_client_urls: "http://localhost:2379".to_string(),
            listen_metrics_urls: String::new(),
            experimental_enable_distributed_tracing: false,
            experimental_distributed_tracing_address: "localhost:4317".to_string(),
            experimental_distributed_tracing_service_name: "etcd".to_string(),
            experimental_distributed_tracing_instance_id: String::new(),
            experimental_distributed_tracing_sampling_rate: 0,
            cert_file: String::new(),
            key_file: String::new(),
            trusted_ca_file: String::new(),
            client_cert_auth: false,
            auto_tls: false,
            peer_cert_file: String::new(),
            peer_key_file: String::new(),
            peer_trusted_ca_file: String::new(),
            peer_client_cert_auth: false,
            peer_auto_tls: false,
            self_signed_cert_validity: 1,
            cipher_suites: String::new(),
            tls_min_version: String::new(),
            tls_max_version: String::new(),
            client_crl_file: String::new(),
            peer_crl_file: String::new(),
            advertise_client_urls: "http://localhost:2379".to_string(),
            listen_peer_urls: "http://localhost:2380".to_string(),
            initial_advertise_peer_urls: "http://localhost:2380".to_string(),
            initial_cluster: String::new(),
            initial_cluster_state: "new".to_string(),
            initial_cluster_token: "etcd-cluster".to_string(),
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            quota_backend_bytes: 0,
            auto_compaction_mode: "periodic".to_string(),
            auto_compaction_retention: "0".to_string(),
            log_level: "info".to_string(),
            logger: "zap".to_string(),
            log_outputs: "default".to_string(),
            heartbeat_interval: 100,
            election_timeout: 1000,
            snapshot_count: 10_000,
            max_learners: 1,
            strict_reconfig_check: true,
            pre_vote: true,
            watch_progress_notify_interval: "10m".to_string(),
            experimental_enable_lease_checkpoint: false,
            experimental_lease_checkpoint_interval: "5m".to_string(),
            experimental_corrupt_check_time: "0s".to_string(),
            experimental_initial_corrupt_check: false,
            feature_gates: String::new(),
            notices: Vec::new(),
            // etcd's default, as mvcc::purge::DEFAULT_BATCH_LIMIT (config may not use mvcc).
            experimental_compaction_batch_limit: 1000,
            max_apply_backlog: 5000,
            experimental_enable_lease_checkpoint_persist: false,
            bcrypt_cost: 10,
            auth_token: "simple".to_string(),
            auth_token_ttl: 300,
            enable_pprof: false,
            cors: "*".to_string(),
            host_whitelist: "*".to_string(),
        }
    }
}

/// `new` or `existing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster.
    New,
    /// Join an existing cluster.
    Existing,
}

/// When the leader compacts on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history in time.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard error (etcd's `default`).
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client listen addresses.
    pub listen_client: Vec<SocketAddr>,
    /// Client unix sockets (`unix://host:port` URLs: a file named `host:port` in the working
    /// directory, as etcd's).
    pub listen_client_unix: Vec<PathBuf>,
    /// Extra listen addresses for `/metrics` and the health endpoints.
    pub listen_metrics: Vec<SocketAddr>,
    /// Which client listen addresses speak TLS (`https` URLs), by index of `listen_client`.
    pub listen_client_tls: Vec<bool>,
    /// Which metrics listen addresses speak TLS.
    pub listen_metrics_tls: Vec<bool>,
    /// Whether the peer listeners speak TLS (`https` peer URLs).
    pub listen_peer_tls: bool,
    /// Client TLS settings (used by `https` client URLs).
    pub client_tls: TlsSettings,
    /// Span export, when distributed tracing is on.
    pub tracing: Option<crate::telemetry::Tracing>,
    /// Peer TLS settings (used by `https` peer URLs, listening and dialing).
    pub peer_tls: TlsSettings,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses.
    pub listen_peer: Vec<SocketAddr>,
    /// Advertised peer URLs (as written: they feed the member ID).
    pub advertise_peer_urls: Vec<String>,
    /// Initial members: name and peer URLs, in the order given.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// New or existing cluster.
    pub cluster_state: ClusterState,
    /// Cluster token.
    pub token: String,
    /// Largest request, in bytes.
    pub max_request_bytes: u64,
    /// Most ops in a transaction.
    pub max_txn_ops: u64,
    /// Backend quota in bytes.
    pub quota_backend_bytes: i64,
    /// Auto-compaction, if enabled.
    pub auto_compaction: Option<AutoCompaction>,
    /// Log level.
    pub log_level: String,
    /// Log outputs.
    pub log_outputs: Vec<LogOutput>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout.
    pub election: Duration,
    /// Snapshot count.
    pub snapshot_count: u64,
    /// Most learners at once.
    pub max_learners: usize,
    /// Refuse membership changes that would cost quorum.
    pub strict_reconfig_check: bool,
    /// Pre-vote before campaigning (etcd's `--pre-vote`).
    pub pre_vote: bool,
    /// Period of watch progress notifications.
    pub watch_progress_notify_interval: Duration,
    /// How often the leader checkpoints remaining lease TTLs; `None` when it does not.
    pub lease_checkpoint_interval: Option<Duration>,
    /// How often the leader runs the corruption check; `None` when it does not.
    pub corrupt_check_interval: Option<Duration>,
    /// Compare this member's hash with its peers' before serving clients.
    pub initial_corrupt_check: bool,
    /// Warnings to log once logging is up (etcd names accepted without effect).
    pub notices: Vec<String>,
    /// Most stored revisions a compaction deletes per write.
    pub compaction_batch_limit: usize,
    /// Committed but unapplied raft entries above which proposals are refused.
    pub max_apply_backlog: u64,
    /// bcrypt cost of password hashes.
    pub bcrypt_cost: u32,
    /// How long a simple token lives after its last use.
    pub auth_token_ttl: Duration,
    /// JWT tokens (`--auth-token jwt,...`); `None` for simple tokens.
    pub auth_jwt: Option<JwtOptions>,
    /// Serve CPU profiles at `/debug/pprof/` (`--enable-pprof`, or `--log-level=debug`).
    pub enable_pprof: bool,
    /// Origins given CORS headers; `None` for any (`*`).
    pub cors: Option<Vec<String>>,
    /// Host names plain-HTTP requests may name; `None` for any (`*`).
    pub host_whitelist: Option<Vec<String>>,
}

impl Config {
    /// Layers defaults, the config file, the environment and the flags.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        Config::load_over(flags, &std::collections::BTreeMap::new())
    }

    /// As [`Config::load`], with `platform` (settings by etcd name, such as those a member derives
    /// from its Kubernetes pod identity) layered over the defaults and under everything the user
    /// gave: the config file, `ETCD_*`/`OXCD_*` variables and flags all override it.
    pub fn load_over(
        flags: &Flags,
        platform: &std::collections::BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let env_file = std::env::var("ETCD_CONFIG_FILE")
            .ok()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let mut fig = Figment::new()
            .merge(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(platform));
        let mut notices = Vec::new();
        if let Some(path) = flags.config_file.clone().or(env_file) {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path));
            }
            let (other_names, found) =
                etcd_names::translate_file(&path, flags::SETTINGS).map_err(ConfigError::Load)?;
            notices.extend(found);
            fig = fig.merge(Yaml::file(path));
            fig = fig.merge(Serialized::defaults(other_names));
        }
        notices.extend(
            etcd_names::check_env(std::env::vars(), flags::SETTINGS).map_err(ConfigError::Load)?,
        );
        let known: Vec<String> = flags::SETTINGS.iter().map(|s| s.to_string()).collect();
        for prefix in ["ETCD_", "OXCD_"] {
            let known = known.clone();
            fig = fig.merge(
                Env::prefixed(prefix)
                    .map(|k| {
                        let name = k.as_str().replace('_', "-");
                        etcd_names::alias_target(&name).to_string().into()
                    })
                    .filter(move |k| known.iter().any(|n| n.eq_ignore_ascii_case(k.as_str()))),
            );
        }
        fig = fig.merge(Serialized::defaults(flags.settings_map()));
        let mut config = fig.extract::<Config>().map_err(load_error)?;
        config.notices = notices;
        Ok(config)
    }

    /// Checks every value and resolves defaults that depend on others.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.name.is_empty() {
            return Err(invalid("name", &self.name, "must not be empty"));
        }
        let data_dir = if self.data_dir.is_empty() {
            PathBuf::from(format!("{}.oxcd", self.name))
        } else {
            PathBuf::from(&self.data_dir)
        };
        let (listen_client_unix, tcp_client_urls) =
            parse::split_unix("listen-client-urls", &self.listen_client_urls)?;
        let (listen_client, listen_client_tls) =
            if tcp_client_urls.is_empty() && !listen_client_unix.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                (
                    listen_addrs("listen-client-urls", &tcp_client_urls)?,
                    https_flags("listen-client-urls", &tcp_client_urls)?,
                )
            };
        let listen_metrics = if self.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            listen_addrs("listen-metrics-urls", &self.listen_metrics_urls)?
        };
        let listen_metrics_tls = https_flags("listen-metrics-urls", &self.listen_metrics_urls)?;
        let protocol = tls_opts::protocol(
            &self.cipher_suites,
            &self.tls_min_version,
            &self.tls_max_version,
        )?;
        let client_tls = TlsSettings {
            cert_file: non_empty(&self.cert_file),
            key_file: non_empty(&self.key_file),
            trusted_ca_file: non_empty(&self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth,
            auto: self.auto_tls,
            validity_years: self.self_signed_cert_validity.max(1),
            crl_file: non_empty(&self.client_crl_file),
            protocol: protocol.clone(),
        };
        let peer_tls = TlsSettings {
            cert_file: non_empty(&self.peer_cert_file),
            key_file: non_empty(&self.peer_key_file),
            trusted_ca_file: non_empty(&self.peer_trusted_ca_file),
            client_cert_auth: self.peer_client_cert_auth,
            auto: self.peer_auto_tls,
            validity_years: self.self_signed_cert_validity.max(1),
            crl_file: non_empty(&self.peer_crl_file),
            protocol,
        };
        for (i, url) in url_list("listen-client-urls", &tcp_client_urls)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if listen_client_tls.get(i) == Some(&true) && !client_tls.has_identity() {
                return Err(invalid(
                    "listen-client-urls",
                    url,
                    format!("TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"),
                ));
            }
        }
        if client_tls.client_cert_auth && client_tls.trusted_ca_file.is_none() {
            return Err(invalid(
                "client-cert-auth",
                "true",
                "--trusted-ca-file must be provided to verify client certificates",
            ));
        }
        if peer_tls.client_cert_auth && peer_tls.trusted_ca_file.is_none() {
            return Err(invalid(
                "peer-client-cert-auth",
                "true",
                "--peer-trusted-ca-file must be provided to verify peer certificates",
            ));
        }
        let listen_peer_tls = https_flags("listen-peer-urls", &self.listen_peer_urls)?
            .iter()
            .any(|t| *t);
        if listen_peer_tls && !peer_tls.has_identity() {
            return Err(invalid(
                "listen-peer-urls",
                &self.listen_peer_urls,
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer urls with HTTPS scheme",
            ));
        }
        for (flag, file) in [
            ("cert-file", &client_tls.cert_file),
            ("key-file", &client_tls.key_file),
            ("trusted-ca-file", &client_tls.trusted_ca_file),
            ("peer-cert-file", &peer_tls.cert_file),
            ("peer-key-file", &peer_tls.key_file),
            ("peer-trusted-ca-file", &peer_tls.trusted_ca_file),
        ] {
            if let Some(f) = file {
                if !f.exists() {
                    return Err(invalid(flag, &f.display().to_string(), "no such file"));
                }
            }
        }
        let advertise_client_urls = url_list("advertise-client-urls", &self.advertise_client_urls)?;
        let listen_peer = listen_addrs("listen-peer-urls", &self.listen_peer_urls)?;
        let advertise_peer_urls = url_list(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let initial_cluster = if self.initial_cluster.is_empty() {
            vec![(self.name.clone(), advertise_peer_urls.clone())]
        } else {
            parse_initial_cluster(&self.initial_cluster)?
        };
        match initial_cluster.iter().find(|(n, _)| n == &self.name) {
            None => {
                return Err(invalid(
                    "initial-cluster",
                    &self.initial_cluster,
                    format!("has no entry for this member's --name {:?}", self.name),
                ))
            }
            Some((_, urls)) => {
                let mut a = urls.clone();
                let mut b = advertise_peer_urls.clone();
                a.sort();
                b.sort();
                if a != b {
                    return Err(invalid(
                        "initial-cluster",
                        &self.initial_cluster,
                        format!(
                            "{:?} has peer URLs {} but --initial-advertise-peer-urls is {}",
                            self.name,
                            urls.join(","),
                            advertise_peer_urls.join(",")
                        ),
                    ));
                }
            }
        }
        let cluster_state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(invalid(
                    "initial-cluster-state",
                    other,
                    "valid values include 'new', 'existing'",
                ))
            }
        };
        if self.initial_cluster_token.is_empty() {
            return Err(invalid("initial-cluster-token", "", "must not be empty"));
        }
        if self.max_request_bytes == 0 {
            return Err(invalid("max-request-bytes", "0", "must be greater than 0"));
        }
        if self.max_txn_ops == 0 {
            return Err(invalid("max-txn-ops", "0", "must be greater than 0"));
        }
        if self.quota_backend_bytes < 0 {
            return Err(invalid(
                "quota-backend-bytes",
                &self.quota_backend_bytes.to_string(),
                "must not be negative",
            ));
        }
        let auto_compaction =
            parse_auto_compaction(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        let log_level = self.log_level.to_ascii_lowercase();
        if !["debug", "info", "warn", "error", "dpanic", "panic", "fatal"]
            .contains(&log_level.as_str())
        {
            return Err(invalid(
                "log-level",
                &self.log_level,
                "valid values are debug, info, warn, error, dpanic, panic, fatal",
            ));
        }
        if self.logger != "zap" {
            return Err(invalid(
                "logger",
                &self.logger,
                "only 'zap' is supported (as in etcd 3.5+)",
            ));
        }
        let log_outputs = self
            .log_outputs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "default" | "stderr" => LogOutput::Stderr,
                "stdout" => LogOutput::Stdout,
                path => LogOutput::File(PathBuf::from(path)),
            })
            .collect::<Vec<_>>();
        if self.heartbeat_interval == 0 {
            return Err(invalid("heartbeat-interval", "0", "must be greater than 0"));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(invalid(
                "election-timeout",
                &self.election_timeout.to_string(),
                format!(
                    "should be at least as 5 times as --heartbeat-interval ({} ms)",
                    self.heartbeat_interval
                ),
            ));
        }
        let watch_progress_notify_interval = parse_duration(&self.watch_progress_notify_interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    "watch-progress-notify-interval",
                    &self.watch_progress_notify_interval,
                    "expected a positive duration such as 10m or 500ms",
                )
            })?;
        let gates = etcd_names::feature_gates(&self.feature_gates)
            .map_err(|why| invalid("feature-gates", &self.feature_gates, why))?;
        let auth_jwt = parse_auth_token(&self.auth_token)
            .map_err(|why| invalid("auth-token", &self.auth_token, why))?;
        if self.auth_token_ttl == 0 {
            return Err(invalid("auth-token-ttl", "0", "must be greater than 0"));
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(invalid(
                "bcrypt-cost",
                &self.bcrypt_cost.to_string(),
                "must be between 4 and 31",
            ));
        }
        if self.experimental_enable_lease_checkpoint_persist
            && !self.experimental_enable_lease_checkpoint
        {
            return Err(invalid(
                "experimental-enable-lease-checkpoint-persist",
                "true",
                "requires --experimental-enable-lease-checkpoint",
            ));
        }
        let lease_checkpoint_interval =
            parse_duration(&self.experimental_lease_checkpoint_interval)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        "experimental-lease-checkpoint-interval",
                        &self.experimental_lease_checkpoint_interval,
                        "expected a positive duration such as 5m or 30s",
                    )
                })?;
        if self.experimental_distributed_tracing_sampling_rate > 1_000_000 {
            return Err(invalid(
                "experimental-distributed-tracing-sampling-rate",
                &self
                    .experimental_distributed_tracing_sampling_rate
                    .to_string(),
                "must be between 0 and 1000000 (samples per million)",
            ));
        }
        let tracing =
            self.experimental_enable_distributed_tracing
                .then(|| crate::telemetry::Tracing {
                    address: self.experimental_distributed_tracing_address.clone(),
                    service_name: self.experimental_distributed_tracing_service_name.clone(),
                    instance_id: self.experimental_distributed_tracing_instance_id.clone(),
                    sampling_per_million: self.experimental_distributed_tracing_sampling_rate,
                });
        let corrupt_check_interval = parse_duration(&self.experimental_corrupt_check_time)
            .ok_or_else(|| {
                invalid(
                    "experimental-corrupt-check-time",
                    &self.experimental_corrupt_check_time,
                    "expected a duration such as 5m, 30s or 0s",
                )
            })?;
        Ok(Settings {
            corrupt_check_interval: (!corrupt_check_interval.is_zero())
                .then_some(corrupt_check_interval),
            initial_corrupt_check: self.experimental_initial_corrupt_check
                || gates.initial_corrupt_check,
            notices: self.notices.clone(),
            max_apply_backlog: self.max_apply_backlog,
            compaction_batch_limit: match self.experimental_compaction_batch_limit {
                0 => usize::MAX,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            name: self.name.clone(),
            data_dir,
            listen_client,
            listen_client_unix,
            listen_metrics,
            listen_client_tls,
            listen_metrics_tls,
            listen_peer_tls,
            client_tls,
            peer_tls,
            tracing,
            advertise_client_urls,
            listen_peer,
            advertise_peer_urls,
            initial_cluster,
            cluster_state,
            token: self.initial_cluster_token.clone(),
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                2 * 1024 * 1024 * 1024
            } else {
                self.quota_backend_bytes
            },
            auto_compaction,
            log_level,
            log_outputs: if log_outputs.is_empty() {
                vec![LogOutput::Stderr]
            } else {
                log_outputs
            },
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count.max(1),
            max_learners: self.max_learners as usize,
            strict_reconfig_check: self.strict_reconfig_check,
            pre_vote: self.pre_vote,
            watch_progress_notify_interval,
            lease_checkpoint_interval: (self.experimental_enable_lease_checkpoint
                || gates.lease_checkpoint)
                .then_some(lease_checkpoint_interval),
            bcrypt_cost: self.bcrypt_cost as u32,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            auth_jwt,
            enable_pprof: self.enable_pprof || self.log_level.eq_ignore_ascii_case("debug"),
            cors: parse::cors(&self.cors)?,
            host_whitelist: parse::host_whitelist(&self.host_whitelist),
        })
    }
}

#[cfg(test)]
mod tests;

/// The JWT settings from `--auth-token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// The PEM public key that verifies tokens.
    pub pub_key: PathBuf,
    /// The PEM private key that signs tokens (a member without one only verifies).
    pub priv_key: Option<PathBuf>,
    /// The signing method, e.g. `RS256` or `ES256`.
    pub sign_method: String,
    /// How long a token is valid.
    pub ttl: Duration,
}

/// Parses `--auth-token`: `simple`, or `jwt` with comma-separated `key=value` options
/// (`pub-key`, `priv-key`, `sign-method`, `ttl`). `Ok(None)` means simple tokens.
pub fn parse_auth_token(raw: &str) -> Result<Option<JwtOptions>, String> {
    let mut parts = raw.split(',').map(str::trim);
    match parts.next() {
        Some("simple") => {
            if parts.next().is_some() {
                return Err("simple tokens take no options".to_string());
            }
            Ok(None)
        }
        Some("jwt") => {
            let mut pub_key = None;
            let mut priv_key = None;
            let mut sign_method = None;
            let mut ttl = Duration::from_secs(300);
            for p in parts.filter(|p| !p.is_empty()) {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("jwt option {p:?} is not key=value"))?;
                match k {
                    "pub-key" => pub_key = Some(PathBuf::from(v)),
                    "priv-key" => priv_key = Some(PathBuf::from(v)),
                    "sign-method" => {
                        const METHODS: [&str; 9] = [
                            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                            "EdDSA",
                        ];
                        if !METHODS.contains(&v) {
                            return Err(format!(
                                "jwt sign-method {v:?} is not one of {}",
                                METHODS.join(", ")
                            ));
                        }
                        sign_method = Some(v.to_string())
                    }
                    "ttl" => {
                        ttl = parse_duration(v)
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| format!("jwt ttl {v:?} is not a positive duration"))?
                    }
                    other => return Err(format!("unknown jwt option {other:?}")),
                }
            }
            Ok(Some(JwtOptions {
                pub_key: pub_key.ok_or("jwt needs pub-key=<PEM file>")?,
                priv_key,
                sign_method: sign_method.ok_or("jwt needs sign-method=<RS256, ES256, ...>")?,
                ttl,
            }))
        }
        _ => Err("expected simple or jwt,pub-key=...,priv-key=...,sign-method=...".to_string()),
    }
}
