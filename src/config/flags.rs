//! Command-line flags with etcd's names. A flag given on the command line wins over the config file
//! and the environment; an unknown flag is an error (clap prints it and exits non-zero). Boolean
//! flags may be given bare (`--strict-reconfig-check` means `=true`), as Go's flag package allows.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;

macro_rules! settings_flags {
    (@bare $b:literal) => { true };
    (@bare) => { false };
    ($( $field:ident => $name:literal, $help:literal $(, bare = $bare:literal)?; )*) => {
        /// oxcd's command line.
        #[derive(Parser, Debug, Default, Clone)]
        #[command(
            name = "oxcd",
            about = "oxcd: an etcd-compatible, Raft-replicated key-value store",
            disable_version_flag = true
        )]
        pub struct Flags {
            /// Print the version and exit.
            #[arg(long)]
            pub version: bool,
            /// Path to a YAML config file with etcd's keys (env: ETCD_CONFIG_FILE).
            #[arg(long = "config-file", value_name = "PATH")]
            pub config_file: Option<PathBuf>,
            /// A subcommand; without one, oxcd serves.
            #[command(subcommand)]
            pub command: Option<Command>,
            $(
                #[doc = $help]
                #[arg(
                    long = $name,
                    value_name = "VALUE"
                    $(, num_args = 0..=1, default_missing_value = $bare)?
                )]
                pub $field: Option<String>,
            )*
        }

        /// Every setting a flag, env var or config key can carry, by its etcd name.
        pub const SETTINGS: &[&str] = &[$($name),*];

        /// Each setting's name and whether it is a boolean that may be given bare.
        const BOOLEAN: &[(&str, bool)] = &[$(($name, settings_flags!(@bare $($bare)?))),*];

        impl Flags {
            /// The settings given on the command line, by etcd name.
            pub fn settings_map(&self) -> BTreeMap<String, String> {
                let mut m = BTreeMap::new();
                $(
                    if let Some(v) = &self.$field {
                        m.insert($name.to_string(), v.clone());
                    }
                )*
                m
            }
        }
    };
}

settings_flags! {
    name => "name", "Human-readable name for this member (default \"default\").";
    data_dir => "data-dir", "Path to the data directory (default \"<name>.oxcd\").";
    listen_client_urls => "listen-client-urls", "URLs to listen on for client traffic (default http://localhost:2379).";
    cert_file => "cert-file", "Path to the client server TLS certificate file.";
    key_file => "key-file", "Path to the client server TLS key file.";
    trusted_ca_file => "trusted-ca-file", "Path to the client server TLS trusted CA certificate file.";
    client_cert_auth => "client-cert-auth", "Require client certificates signed by --trusted-ca-file; with authentication on, the certificate's common name is the user (default false).", bare = "true";
    auto_tls => "auto-tls", "Client TLS with a generated self-signed certificate (default false).", bare = "true";
    peer_cert_file => "peer-cert-file", "Path to the peer server TLS certificate file (also the client certificate towards peers).";
    peer_key_file => "peer-key-file", "Path to the peer server TLS key file.";
    peer_trusted_ca_file => "peer-trusted-ca-file", "Path to the peer server TLS trusted CA file.";
    peer_client_cert_auth => "peer-client-cert-auth", "Require peer client certificates signed by --peer-trusted-ca-file (default false).", bare = "true";
    peer_auto_tls => "peer-auto-tls", "Peer TLS with generated self-signed certificates (default false).", bare = "true";
    self_signed_cert_validity => "self-signed-cert-validity", "Validity of the auto-TLS certificates, in years (default 1).";
    cipher_suites => "cipher-suites", "Comma-separated TLS 1.2 cipher suites (Go's names) for clients and peers; TLS 1.3's are always on (default: every suite rustls offers).";
    tls_min_version => "tls-min-version", "Lowest TLS version for clients and peers: TLS1.2 or TLS1.3 (default TLS1.2).";
    tls_max_version => "tls-max-version", "Highest TLS version for clients and peers: TLS1.2 or TLS1.3 (default: no limit, TLS1.3).";
    client_crl_file => "client-crl-file", "Path to a PEM file of certificate revocation lists: client certificates they revoke are refused.";
    peer_crl_file => "peer-crl-file", "Path to a PEM file of certificate revocation lists: peer certificates they revoke are refused.";
    experimental_enable_distributed_tracing => "experimental-enable-distributed-tracing", "Export a span per request to an OpenTelemetry collector over OTLP gRPC (default false).", bare = "true";
    experimental_distributed_tracing_address => "experimental-distributed-tracing-address", "The OTLP gRPC collector (default localhost:4317).";
    experimental_distributed_tracing_service_name => "experimental-distributed-tracing-service-name", "The service name on exported spans (default etcd).";
    experimental_distributed_tracing_instance_id => "experimental-distributed-tracing-instance-id", "The instance ID on exported spans (default none).";
    experimental_distributed_tracing_sampling_rate => "experimental-distributed-tracing-sampling-rate", "Requests traced per million (default 0).";
    listen_metrics_urls => "listen-metrics-urls", "More URLs to serve /metrics and the health endpoints on (default none).";
    advertise_client_urls => "advertise-client-urls", "Client URLs to advertise to the cluster (default http://localhost:2379).";
    listen_peer_urls => "listen-peer-urls", "URLs to listen on for peer traffic (default http://localhost:2380).";
    initial_advertise_peer_urls => "initial-advertise-peer-urls", "Peer URLs to advertise to the cluster (default http://localhost:2380).";
    initial_cluster => "initial-cluster", "Initial cluster configuration for bootstrapping, name=URL,... (default <name>=<advertise peer URLs>).";
    initial_cluster_state => "initial-cluster-state", "Initial cluster state: new or existing (default new).";
    initial_cluster_token => "initial-cluster-token", "Initial cluster token (default etcd-cluster).";
    max_request_bytes => "max-request-bytes", "Maximum client request size in bytes (default 1572864).";
    max_txn_ops => "max-txn-ops", "Maximum number of operations permitted in a transaction (default 128).";
    quota_backend_bytes => "quota-backend-bytes", "Backend size quota in bytes; 0 means the default 2 GiB.";
    auto_compaction_mode => "auto-compaction-mode", "Auto compaction mode: periodic or revision (default periodic).";
    auto_compaction_retention => "auto-compaction-retention", "Auto compaction retention: hours or a duration for periodic, a revision count for revision; 0 disables (default 0).";
    log_level => "log-level", "Log level: debug, info, warn, error, panic or fatal (default info).";
    logger => "logger", "Logger: zap (structured JSON, default).";
    log_outputs => "log-outputs", "Log outputs: default, stderr, stdout or file paths, comma-separated (default default = stderr).";
    heartbeat_interval => "heartbeat-interval", "Time (in milliseconds) of a heartbeat interval (default 100).";
    election_timeout => "election-timeout", "Time (in milliseconds) for an election to timeout (default 1000).";
    snapshot_count => "snapshot-count", "Number of applied log entries between snapshots (default 10000).";
    max_learners => "max-learners", "Maximum number of learners allowed in the cluster (default 1).";
    strict_reconfig_check => "strict-reconfig-check", "Reject reconfiguration requests that would cause quorum loss (default true).", bare = "true";
    pre_vote => "pre-vote", "Ask the other voters before campaigning (raft pre-vote), so a member that cannot win never raises the term (default true).", bare = "true";
    watch_progress_notify_interval => "watch-progress-notify-interval", "Duration of periodic watch progress notifications (default 10m).";
    auth_token => "auth-token", "Auth token: simple (default) or jwt,pub-key=<PEM>,priv-key=<PEM>,sign-method=<RS256|ES256|...>,ttl=<duration>.";
    auth_token_ttl => "auth-token-ttl", "Seconds a simple token lives after its last use (default 300).";
    cors => "cors", "Comma-separated origins (scheme://host:port) given CORS headers, or * for any (default *).";
    host_whitelist => "host-whitelist", "Comma-separated Host names accepted by plain-HTTP requests on client URLs, or * for any (default *).";
    bcrypt_cost => "bcrypt-cost", "bcrypt cost of user password hashes, 4 to 31 (default 10).";
    experimental_enable_lease_checkpoint => "experimental-enable-lease-checkpoint", "Checkpoint remaining lease TTLs through the log so they survive a leader change (default false).", bare = "true";
    experimental_lease_checkpoint_interval => "experimental-lease-checkpoint-interval", "How often the leader checkpoints remaining lease TTLs (default 5m).";
    max_apply_backlog => "max-apply-backlog", "oxcd: refuse new proposals with 'etcdserver: too many requests' while more than this many committed raft entries wait to be applied (default 5000, etcd's fixed gap).";
    enable_pprof => "enable-pprof", "Serve CPU profiles at /debug/pprof/profile on client URLs, in pprof's format (default false; also on with --log-level=debug).", bare = "true";
    experimental_compaction_batch_limit => "experimental-compaction-batch-limit", "Most stored revisions a compaction deletes in one write; 0 deletes them all in one (default 1000).";
    experimental_corrupt_check_time => "experimental-corrupt-check-time", "How often the leader compares every member's key-value hash and raises CORRUPT on a mismatch (default 0s: never).";
    feature_gates => "feature-gates", "etcd 3.6's feature gates, Name=true,...: InitialCorruptCheck and LeaseCheckpoint turn on what their experimental flags do; LeaseCheckpointPersist and TxnModeWriteWithSharedBuffer are accepted; others are refused when on (default none).";
    experimental_initial_corrupt_check => "experimental-initial-corrupt-check", "Before serving clients, compare this member's key-value hash with every peer's and refuse to start on a mismatch (default false).", bare = "true";
    experimental_enable_lease_checkpoint_persist => "experimental-enable-lease-checkpoint-persist", "Accepted for etcd compatibility (requires --experimental-enable-lease-checkpoint); checkpoints are always persisted (default false).", bare = "true";
}

/// oxcd's subcommands besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the version and exit.
    Version,
    /// Work with a snapshot file saved by `etcdctl snapshot save` from oxcd.
    Snapshot {
        /// What to do with it.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Check endpoints, as `etcdctl endpoint`.
    Endpoint {
        /// What to check.
        #[command(subcommand)]
        command: EndpointCommand,
    },
}

/// How oxcd's client commands reach the cluster, with etcdctl's flag names.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientFlags {
    /// gRPC endpoints, comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Verify the server's certificate with this CA bundle.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Identify with this TLS client certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long = "insecure-skip-tls-verify")]
    pub insecure_skip_tls_verify: bool,
    /// `username:password` (the password may instead come from OXCD_ROOT_PASSWORD for root).
    #[arg(long)]
    pub user: Option<String>,
    /// Deadline of each call, in seconds.
    #[arg(long = "command-timeout-seconds", default_value_t = 5)]
    pub command_timeout_seconds: u64,
}

/// `oxcd endpoint ...`, as etcdctl's.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum EndpointCommand {
    /// Check that every endpoint serves a linearizable read; exit 1 if one does not.
    Health {
        /// Where and how to connect.
        #[command(flatten)]
        client: ClientFlags,
    },
}

/// `oxcd snapshot ...`, with etcdutl's flags.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Build a new member's data directory from a snapshot file.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The data directory to create (default "<name>.oxcd").
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
        /// The new member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster's members, name=peer-URL,... (checked to list this member; the member
        /// takes it from its own command line when it starts).
        #[arg(
            long = "initial-cluster",
            default_value = "default=http://localhost:2380"
        )]
        initial_cluster: String,
        /// The new cluster's token (printed in the start command; the member takes it from its
        /// own command line).
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// The new member's peer URLs.
        #[arg(
            long = "initial-advertise-peer-urls",
            default_value = "http://localhost:2380"
        )]
        initial_advertise_peer_urls: String,
        /// Restore even if the file's sha256 trailer does not match.
        #[arg(long = "skip-hash-check", num_args = 0..=1, default_missing_value = "true")]
        skip_hash_check: Option<bool>,
    },
    /// Save a member's backup into a file (as `etcdctl snapshot save`), checking its sha256.
    Save {
        /// The file to write.
        file: PathBuf,
        /// Where and how to connect (the first endpoint is used).
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Check a snapshot file and print its hash, revision, row count and size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: String,
    },
}

/// Rewrites a command line before it is parsed: etcd's names that are not oxcd settings of their
/// own ([`super::etcd_names`]) become the oxcd setting they alias, or are dropped when they ask
/// for what oxcd does anyway (or tune something oxcd does not have), or are refused by name.
/// Returns the arguments to parse and the warnings to log once logging is up. Only the part
/// before a subcommand is looked at.
pub fn translate_args(
    args: Vec<std::ffi::OsString>,
) -> Result<(Vec<std::ffi::OsString>, Vec<String>), String> {
    use super::etcd_names::{both_names_error, find, resolve, same_setting, Handling, Outcome};
    let mut out = Vec::with_capacity(args.len());
    let mut notices = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut it = args.into_iter();
    if let Some(program) = it.next() {
        out.push(program);
    }
    let mut rest_verbatim = false;
    while let Some(arg) = it.next() {
        let text = match arg.to_str() {
            Some(t) if !rest_verbatim => t.to_string(),
            _ => {
                out.push(arg);
                continue;
            }
        };
        let Some(body) = text.strip_prefix("--") else {
            // A subcommand or a value: everything after a subcommand is its own.
            if !text.starts_with('-') && !out.last().is_some_and(takes_value) {
                rest_verbatim = true;
            }
            out.push(arg);
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if let Some(other) = seen.iter().find(|s| same_setting(s, &name)) {
            return Err(both_names_error(other, &name));
        }
        seen.push(name.clone());
        let Some(etcd) = find(&name) else {
            out.push(arg);
            continue;
        };
        if let Handling::Alias(to) = etcd.handling {
            out.push(match inline {
                Some(v) => format!("--{to}={v}").into(),
                None => format!("--{to}").into(),
            });
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None if etcd.boolean => "true".to_string(),
            None => match it.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => return Err(format!("flag needs an argument: --{name}")),
            },
        };
        match resolve(&format!("--{name}"), etcd, &value)? {
            Outcome::Use(_) => {}
            Outcome::Drop(notice) => notices.extend(notice),
        }
    }
    Ok((out, notices))
}

/// Whether the previous argument `prev` is a flag that takes the next one as its value.
fn takes_value(prev: &std::ffi::OsString) -> bool {
    let Some(p) = prev.to_str().and_then(|p| p.strip_prefix("--")) else {
        return false;
    };
    if p.contains('=') {
        return false;
    }
    if let Some(e) = super::etcd_names::find(p) {
        return !e.boolean;
    }
    p == "config-file" || BOOLEAN.iter().any(|(n, bare)| *n == p && !bare)
}
