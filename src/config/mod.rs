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
mod settings;
pub mod tls_opts;

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use flags::{
    translate_args, ClientFlags, Command, EndpointCommand, Flags, SnapshotCommand, SETTINGS,
};
pub use parse::{parse_auth_token, parse_duration, JwtOptions, TlsSettings};
pub use settings::{AutoCompaction, ClusterState, LogOutput, Settings};

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
}

#[cfg(test)]
mod tests;
