//! The validated settings ([`Settings`]) and [`Config::validate`], which derives them from a
//! [`Config`].
//!
//! Invariants: validation reads the configuration only (it never touches the data directory);
//! every error names the setting and the value; defaults that depend on other settings (the data
//! directory, advertised URLs, the initial cluster) are resolved here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{
    self, https_flags, listen_addrs, non_empty, parse_auth_token, parse_auto_compaction,
    parse_duration, parse_initial_cluster, url_list, JwtOptions, TlsSettings,
};
use super::{etcd_names, invalid, tls_opts, Config, ConfigError};

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
