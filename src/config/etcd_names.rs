//! etcd 3.5's and 3.6's setting names that are not oxcd settings of their own, and what oxcd does
//! with each, so that an etcd command line, environment or config file either works or is refused
//! by name (never with a generic "unknown flag").
//!
//! Invariants:
//! - Every name etcd 3.5 or 3.6 registers is either an oxcd setting ([`super::flags::SETTINGS`])
//!   or listed here; a unit test holds the two lists apart.
//! - A name is refused only for a value that would make oxcd behave differently from what the
//!   user asked: a value that asks for what oxcd does anyway (etcd's default, mostly) is accepted.
//! - A name accepted without effect says so at start-up (a warning), never silently.

/// What oxcd does with one of etcd's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Another name of an oxcd setting (etcd 3.6's renames, etcd 3.5's experimental names).
    Alias(&'static str),
    /// Accepted when the value is one of these (what oxcd does anyway); any other value is refused
    /// with the reason.
    Only(&'static [&'static str], &'static str),
    /// Accepted with any value and no effect, for the reason given: it tunes a part of etcd that
    /// oxcd does not have.
    NoEffect(&'static str),
}

/// One of etcd's names.
#[derive(Debug, Clone, Copy)]
pub struct EtcdName {
    /// The flag name, without dashes.
    pub name: &'static str,
    /// Whether etcd parses it as a boolean flag (`--name` alone means true).
    pub boolean: bool,
    /// What oxcd does with it.
    pub handling: Handling,
}

const FALSE: &[&str] = &["false", "0", "f"];
const TRUE: &[&str] = &["true", "1", "t"];
const EMPTY: &[&str] = &[""];

macro_rules! names {
    ($( $name:literal $(, $b:ident)? => $h:expr; )*) => {
        /// Every etcd name oxcd handles without a setting of its own.
        pub const NAMES: &[EtcdName] = &[$(EtcdName {
            name: $name,
            boolean: names!(@b $($b)?),
            handling: $h,
        }),*];
    };
    (@b bool) => { true };
    (@b) => { false };
}

use Handling::{Alias, NoEffect, Only};

names! {
    // etcd 3.5's experimental names that 3.5 itself spells this way, and 3.6's renames.
    "experimental-watch-progress-notify-interval" => Alias("watch-progress-notify-interval");
    "corrupt-check-time" => Alias("experimental-corrupt-check-time");
    "compaction-batch-limit" => Alias("experimental-compaction-batch-limit");
    "enable-distributed-tracing", bool => Alias("experimental-enable-distributed-tracing");
    "distributed-tracing-address" => Alias("experimental-distributed-tracing-address");
    "distributed-tracing-service-name" => Alias("experimental-distributed-tracing-service-name");
    "distributed-tracing-instance-id" => Alias("experimental-distributed-tracing-instance-id");
    "distributed-tracing-sampling-rate" => Alias("experimental-distributed-tracing-sampling-rate");

    // Asks for what oxcd does anyway at etcd's default; anything else is refused.
    "client-cert-allowed-hostname" => Only(EMPTY, "client certificates are not matched against host names");
    "peer-cert-allowed-cn" => Only(EMPTY, "peer certificates are checked against --peer-trusted-ca-file only");
    "peer-cert-allowed-hostname" => Only(EMPTY, "peer certificates are checked against --peer-trusted-ca-file only");
    "experimental-peer-skip-client-san-verification", bool => Only(FALSE, "peer certificates' SANs are always verified");
    "peer-skip-client-san-verification", bool => Only(FALSE, "peer certificates' SANs are always verified");
    "peer-client-cert-file" => Only(EMPTY, "a member presents --peer-cert-file when it dials its peers");
    "peer-client-key-file" => Only(EMPTY, "a member presents --peer-key-file when it dials its peers");
    "listen-client-http-urls" => Only(EMPTY, "the JSON gateway is served on the --listen-client-urls ports");
    "enable-grpc-gateway", bool => Only(TRUE, "the JSON gateway is always served");
    "enable-v2", bool => Only(FALSE, "there is no v2 API");
    "experimental-enable-v2v3" => Only(EMPTY, "there is no v2 API");
    "proxy" => Only(&["off"], "oxcd has no v2 proxy mode");
    "wal-dir" => Only(EMPTY, "the raft log is kept in the data directory's RocksDB");
    "discovery" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "discovery-srv" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "discovery-srv-name" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "discovery-proxy" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "discovery-endpoints" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "discovery-token" => Only(EMPTY, "members bootstrap from --initial-cluster or their StatefulSet pod identity");
    "force-new-cluster", bool => Only(FALSE, "a member cannot be forced into a new one-member cluster; restore a snapshot instead");
    "unsafe-no-fsync", bool => Only(FALSE, "every log append is fsynced");
    "metrics" => Only(&["basic"], "only etcd's basic metrics are exported");
    "log-format" => Only(&["json"], "logs are JSON lines");
    "enable-log-rotation", bool => Only(FALSE, "logs are not rotated; send them to stderr or rotate the file outside");
    "socket-reuse-port", bool => Only(FALSE, "listeners do not set SO_REUSEPORT");
    "socket-reuse-address", bool => Only(FALSE, "listeners do not set SO_REUSEADDR");
    "experimental-memory-mlock", bool => Only(FALSE, "memory is not locked");
    "memory-mlock", bool => Only(FALSE, "memory is not locked");
    "experimental-stop-grpc-service-on-defrag", bool => Only(FALSE, "defragmentation does not stop the gRPC service");
    "experimental-compact-hash-check-enabled", bool => Only(FALSE, "the compaction hash check is not built; use --experimental-corrupt-check-time");

    // Tunes a part of etcd that oxcd does not have: accepted, with a warning.
    "backend-bbolt-freelist-type" => NoEffect("there is no bbolt backend (RocksDB)");
    "backend-batch-interval" => NoEffect("there is no bbolt backend: an apply commits its own RocksDB write batch");
    "backend-batch-limit" => NoEffect("there is no bbolt backend: an apply commits its own RocksDB write batch");
    "experimental-bootstrap-defrag-threshold-megabytes" => NoEffect("there is no bbolt file to defragment at start");
    "bootstrap-defrag-threshold-megabytes" => NoEffect("there is no bbolt file to defragment at start");
    "experimental-txn-mode-write-with-shared-buffer", bool => NoEffect("there is no bbolt read buffer");
    "max-snapshots" => NoEffect("the newest two raft snapshots are kept");
    "max-wals" => NoEffect("there are no WAL files; the raft log is purged after each snapshot");
    "experimental-snapshot-catchup-entries" => NoEffect("openraft keeps the log for catch-up after a snapshot by its own policy");
    "snapshot-catchup-entries" => NoEffect("openraft keeps the log for catch-up after a snapshot by its own policy");
    "initial-election-tick-advance", bool => NoEffect("the first election waits a randomized election timeout");
    "raft-read-timeout" => NoEffect("peer calls time out after the election timeout");
    "raft-write-timeout" => NoEffect("peer calls time out after the election timeout");
    "grpc-keepalive-min-time" => NoEffect("the gRPC server's HTTP/2 keepalive settings are fixed");
    "grpc-keepalive-interval" => NoEffect("the gRPC server's HTTP/2 keepalive settings are fixed");
    "grpc-keepalive-timeout" => NoEffect("the gRPC server's HTTP/2 keepalive settings are fixed");
    "max-concurrent-streams" => NoEffect("the gRPC server's stream limit is fixed");
    "experimental-warning-apply-duration" => NoEffect("slow applies are not logged by duration");
    "warning-apply-duration" => NoEffect("slow applies are not logged by duration");
    "warning-unary-request-duration" => NoEffect("slow requests are not logged by duration");
    "experimental-warning-unary-request-duration" => NoEffect("slow requests are not logged by duration");
    "experimental-downgrade-check-time" => NoEffect("there is no downgrade monitor");
    "downgrade-check-time" => NoEffect("there is no downgrade monitor");
    "experimental-compact-hash-check-time" => NoEffect("the compaction hash check is not built");
    "compact-hash-check-time" => NoEffect("the compaction hash check is not built");
    "experimental-compaction-sleep-interval" => NoEffect("background compaction rests twice as long as each batch took, at most 10 ms");
    "compaction-sleep-interval" => NoEffect("background compaction rests twice as long as each batch took, at most 10 ms");
    "v2-deprecation" => NoEffect("there is no v2 API or v2 data");
    "client-cert-file" => NoEffect("the gateway calls the services in process, not as a TLS client");
    "client-key-file" => NoEffect("the gateway calls the services in process, not as a TLS client");
    "discovery-fallback" => NoEffect("discovery is not used");
    "discovery-dial-timeout" => NoEffect("discovery is not used");
    "discovery-request-timeout" => NoEffect("discovery is not used");
    "discovery-keepalive-time" => NoEffect("discovery is not used");
    "discovery-keepalive-timeout" => NoEffect("discovery is not used");
    "discovery-insecure-transport", bool => NoEffect("discovery is not used");
    "discovery-insecure-skip-tls-verify", bool => NoEffect("discovery is not used");
    "discovery-cert" => NoEffect("discovery is not used");
    "discovery-key" => NoEffect("discovery is not used");
    "discovery-cacert" => NoEffect("discovery is not used");
    "discovery-user" => NoEffect("discovery is not used");
    "discovery-password" => NoEffect("discovery is not used");
    "proxy-failure-wait" => NoEffect("oxcd has no v2 proxy mode");
    "proxy-refresh-interval" => NoEffect("oxcd has no v2 proxy mode");
    "proxy-dial-timeout" => NoEffect("oxcd has no v2 proxy mode");
    "proxy-write-timeout" => NoEffect("oxcd has no v2 proxy mode");
    "proxy-read-timeout" => NoEffect("oxcd has no v2 proxy mode");
    "log-rotation-config-json" => NoEffect("logs are not rotated");
    // Names etcd itself accepts and ignores.
    "cluster-active-size" => NoEffect("etcd ignores it too");
    "cluster-remove-delay" => NoEffect("etcd ignores it too");
    "cluster-sync-interval" => NoEffect("etcd ignores it too");
    "config" => NoEffect("etcd ignores it too (the config file is --config-file)");
    "force", bool => NoEffect("etcd ignores it too");
    "max-result-buffer" => NoEffect("etcd ignores it too");
    "max-retry-attempts" => NoEffect("etcd ignores it too");
    "peer-heartbeat-interval" => NoEffect("etcd ignores it too (the setting is --heartbeat-interval)");
    "peer-election-timeout" => NoEffect("etcd ignores it too (the setting is --election-timeout)");
    "retry-interval" => NoEffect("etcd ignores it too");
    "snapshot", bool => NoEffect("etcd ignores it too");
    "v", bool => NoEffect("etcd ignores it too");
    "vv", bool => NoEffect("etcd ignores it too");
}

/// The etcd name `name` (any case), if oxcd handles it here.
pub fn find(name: &str) -> Option<&'static EtcdName> {
    NAMES.iter().find(|n| n.name.eq_ignore_ascii_case(name))
}

/// What to do with a value given under one of etcd's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Use the value for this oxcd setting.
    Use(&'static str),
    /// Drop it; with a warning to log at start-up when it has no effect.
    Drop(Option<String>),
}

/// Decides what the value `value` given as `place` (how the user wrote the name: `--cors`,
/// `ETCD_CORS`, `cors in etcd.yml`) under `name` does, or why it is refused.
pub fn resolve(place: &str, name: &EtcdName, value: &str) -> Result<Outcome, String> {
    match name.handling {
        Alias(to) => Ok(Outcome::Use(to)),
        Only(allowed, why) => {
            let v = value.trim();
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) {
                Ok(Outcome::Drop(None))
            } else {
                Err(format!("{place}={v:?} is not supported by oxcd: {why}"))
            }
        }
        NoEffect(why) => Ok(Outcome::Drop(Some(format!(
            "{place} is accepted for etcd compatibility and has no effect in oxcd: {why}"
        )))),
    }
}

/// etcd 3.6's message when an old and a new name of one setting are both given (`a` and `b`
/// in either order; the experimental one is the old one).
pub fn both_names_error(a: &str, b: &str) -> String {
    let (old, new) = if a.starts_with("experimental-") {
        (a, b)
    } else {
        (b, a)
    };
    format!("cannot set --{old} and --{new} at the same time, please use --{new} only")
}

/// etcd 3.6's feature gates (`--feature-gates=Name=true,...`) as oxcd settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureGates {
    /// `InitialCorruptCheck`.
    pub initial_corrupt_check: bool,
    /// `LeaseCheckpoint`.
    pub lease_checkpoint: bool,
}

/// Parses `--feature-gates` with etcd's error texts; gates oxcd does not build are refused when
/// turned on.
pub fn feature_gates(spec: &str) -> Result<FeatureGates, String> {
    let mut gates = FeatureGates::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!("missing bool value for {part}"));
        };
        let (name, value) = (name.trim(), value.trim());
        let on = match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => true,
            "false" | "0" | "f" => false,
            _ => {
                return Err(format!(
                    "invalid value of {name}={value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax"
                ))
            }
        };
        match name {
            "InitialCorruptCheck" => gates.initial_corrupt_check = on,
            "LeaseCheckpoint" => gates.lease_checkpoint = on,
            // Always on in oxcd (checkpoints persist), and no bbolt buffer to share.
            "LeaseCheckpointPersist" | "TxnModeWriteWithSharedBuffer" => {}
            "StopGRPCServiceOnDefrag" | "CompactHashCheck" | "SetMemberLocalAddr" => {
                if on {
                    return Err(format!("feature gate {name}=true is not supported by oxcd"));
                }
            }
            other => return Err(format!("unrecognized feature gate: {other}")),
        }
    }
    Ok(gates)
}

/// The config-file key for `key` inside etcd's `client-transport-security` (`peer = false`) or
/// `peer-transport-security` block, as a flat etcd name.
pub fn transport_security_key(peer: bool, key: &str) -> String {
    let flat = match key {
        "allowed-cn" => "cert-allowed-cn",
        "allowed-hostname" => "cert-allowed-hostname",
        "skip-client-san-verification" => "skip-client-san-verification",
        other => other,
    };
    if peer {
        format!("peer-{flat}")
    } else if flat == "cert-allowed-cn" {
        // etcd has no client-side flag for it; it is refused like the peer one.
        "peer-cert-allowed-cn".to_string()
    } else if flat == "cert-allowed-hostname" {
        "client-cert-allowed-hostname".to_string()
    } else if flat == "skip-client-san-verification" {
        "peer-skip-client-san-verification".to_string()
    } else {
        flat.to_string()
    }
}

/// A YAML value as the text a flag would carry (lists joined with commas).
fn yaml_text(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(yaml_text).collect::<Vec<_>>().join(","),
        Value::Mapping(_) | Value::Tagged(_) => "<mapping>".to_string(),
    }
}

/// Settings a config file gives under etcd's other names (aliases, and the keys of etcd's
/// `client-transport-security` and `peer-transport-security` blocks), by oxcd setting name, to
/// layer right over the file; and the warnings for keys without effect. Keys that are oxcd
/// settings are read from the file itself; unknown keys are ignored, as etcd does.
pub fn translate_file(
    path: &std::path::Path,
    settings: &[&str],
) -> Result<
    (
        std::collections::BTreeMap<String, serde_yaml::Value>,
        Vec<String>,
    ),
    String,
> {
    let mut out = std::collections::BTreeMap::new();
    let mut notices = Vec::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((out, notices));
    };
    // A file that is not a YAML mapping is reported by the main loader.
    let Ok(serde_yaml::Value::Mapping(map)) = serde_yaml::from_str::<serde_yaml::Value>(&text)
    else {
        return Ok((out, notices));
    };
    let file = path.display();
    let mut given: Vec<String> = Vec::new();
    let mut take = |name: String,
                    value: &serde_yaml::Value,
                    place: String,
                    from_block: bool|
     -> Result<(), String> {
        if let Some(other) = given.iter().find(|g| same_setting(g, &name)) {
            return Err(both_names_error(other, &name));
        }
        given.push(name.clone());
        if settings.contains(&name.as_str()) {
            if from_block {
                out.insert(name, value.clone());
            }
            return Ok(());
        }
        let Some(etcd) = find(&name) else {
            return Ok(());
        };
        match resolve(&place, etcd, &yaml_text(value))? {
            Outcome::Use(to) => {
                out.insert(to.to_string(), value.clone());
            }
            Outcome::Drop(notice) => notices.extend(notice),
        }
        Ok(())
    };
    for (k, v) in &map {
        let Some(key) = k.as_str() else { continue };
        let block = match key {
            "client-transport-security" => Some(false),
            "peer-transport-security" => Some(true),
            _ => None,
        };
        match (block, v) {
            (Some(peer), serde_yaml::Value::Mapping(inner)) => {
                for (bk, bv) in inner {
                    let Some(bkey) = bk.as_str() else { continue };
                    take(
                        transport_security_key(peer, bkey),
                        bv,
                        format!("{key}.{bkey} in {file}"),
                        true,
                    )?;
                }
            }
            (Some(_), _) => {}
            (None, _) => take(key.to_string(), v, format!("{key} in {file}"), false)?,
        }
    }
    Ok((out, notices))
}

/// Whether `a` and `b` are two different names of one setting (an alias and its target).
pub fn same_setting(a: &str, b: &str) -> bool {
    a != b && alias_target(a) == alias_target(b)
}

/// The oxcd setting `name` stands for (itself unless it is an alias).
pub fn alias_target(name: &str) -> &str {
    match find(name).map(|e| e.handling) {
        Some(Handling::Alias(to)) => to,
        _ => name,
    }
}

/// Checks the `ETCD_*`/`OXCD_*` variables in `vars` that use etcd's other names: refuses those
/// asking for what oxcd does not do, and returns the warnings to log (variables without
/// effect, and `ETCD_*` variables etcd would not recognise either). Aliases are read by the
/// environment provider itself.
pub fn check_env(
    vars: impl Iterator<Item = (String, String)>,
    settings: &[&str],
) -> Result<Vec<String>, String> {
    let mut notices = Vec::new();
    let mut given: Vec<String> = Vec::new();
    for (k, v) in vars {
        let Some((prefix, rest)) = ["ETCD_", "OXCD_"]
            .iter()
            .find_map(|p| k.strip_prefix(p).map(|r| (*p, r)))
        else {
            continue;
        };
        let name = rest.to_ascii_lowercase().replace('_', "-");
        if let Some(other) = given.iter().find(|g| same_setting(g, &name)) {
            return Err(both_names_error(other, &name));
        }
        given.push(name.clone());
        if settings.contains(&name.as_str()) || name == "config-file" {
            continue;
        }
        match find(&name) {
            Some(etcd) => match resolve(&k, etcd, &v)? {
                Outcome::Use(_) => {}
                Outcome::Drop(notice) => notices.extend(notice),
            },
            None if prefix == "ETCD_" => {
                notices.push(format!("unrecognized environment variable {k}"));
            }
            None => {}
        }
    }
    Ok(notices)
}

#[cfg(test)]
mod tests;
