//! Parsing of single settings: URL lists and their schemes, listen addresses, the initial
//! cluster, Go durations, auto-compaction, the auth token option, and the TLS settings of one
//! side.
//!
//! Invariants: every parser names the flag and the value in its error; none touches the file
//! system or the network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, tls_opts, AutoCompaction, ConfigError};

pub(super) fn url_list(flag: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = url::Url::parse(part).map_err(|e| invalid(flag, part, e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(invalid(
                    flag,
                    part,
                    format!("URL scheme must be http or https, got {other:?}"),
                ))
            }
        }
        if url.host_str().is_none() || url.port().is_none() {
            return Err(invalid(flag, part, "URL must have a host and a port"));
        }
        out.push(part.to_string());
    }
    if out.is_empty() {
        return Err(invalid(flag, raw, "at least one URL is required"));
    }
    Ok(out)
}

/// Whether each URL of a list is `https`.
pub(super) fn https_flags(flag: &'static str, raw: &str) -> Result<Vec<bool>, ConfigError> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(url_list(flag, raw)?
        .iter()
        .map(|u| u.starts_with("https://"))
        .collect())
}

pub(super) fn non_empty(s: &str) -> Option<PathBuf> {
    (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()))
}

/// TLS settings of one side (clients or peers), with etcd's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA that signs the other side's certificates (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether the other side must present a certificate signed by the trusted CA.
    pub client_cert_auth: bool,
    /// Generate a self-signed certificate when none is given.
    pub auto: bool,
    /// Validity of generated certificates, in years.
    pub validity_years: u64,
    /// Certificate revocation lists the other side's certificates are checked against (PEM).
    pub crl_file: Option<PathBuf>,
    /// Protocol versions and TLS 1.2 cipher suites (the same on both sides).
    pub protocol: tls_opts::Protocol,
}

impl TlsSettings {
    /// Whether a certificate is given or will be generated.
    pub fn has_identity(&self) -> bool {
        (self.cert_file.is_some() && self.key_file.is_some()) || self.auto
    }
}

pub(super) fn listen_addrs(flag: &'static str, raw: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for u in url_list(flag, raw)? {
        let url = url::Url::parse(&u).map_err(|e| invalid(flag, &u, e.to_string()))?;
        let port = url.port().unwrap_or(0);
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| invalid(flag, &u, format!("expected IP in URL for binding ({u})")))?
        };
        out.push(SocketAddr::new(ip, port));
    }
    Ok(out)
}

pub(super) fn parse_initial_cluster(raw: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| invalid("initial-cluster", raw, format!("{part:?} is not name=URL")))?;
        let url = url_list("initial-cluster", url)?.remove(0);
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => out.push((name.to_string(), vec![url])),
        }
    }
    if out.is_empty() {
        return Err(invalid("initial-cluster", raw, "no members given"));
    }
    Ok(out)
}

/// Parses durations such as `1h`, `30m`, `1h30m`, `90s`, `500ms`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = raw.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let secs = match unit.as_str() {
            "h" => v * 3600.0,
            "m" => v * 60.0,
            "s" => v,
            "ms" => v / 1000.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
        any = true;
    }
    if !num.is_empty() {
        return None;
    }
    any.then_some(total)
}

pub(super) fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<AutoCompaction>, ConfigError> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            if let Ok(hours) = retention.parse::<u64>() {
                return Ok((hours > 0)
                    .then(|| AutoCompaction::Periodic(Duration::from_secs(hours * 3600))));
            }
            match parse_duration(retention) {
                Some(d) if d.is_zero() => Ok(None),
                Some(d) => Ok(Some(AutoCompaction::Periodic(d))),
                None => Err(invalid(
                    "auto-compaction-retention",
                    retention,
                    "expected hours (e.g. 1) or a duration (e.g. 30m)",
                )),
            }
        }
        "revision" => match retention.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(n) if n > 0 => Ok(Some(AutoCompaction::Revision(n))),
            _ => Err(invalid(
                "auto-compaction-retention",
                retention,
                "expected a revision count in revision mode",
            )),
        },
        other => Err(invalid(
            "auto-compaction-mode",
            other,
            "valid values are 'periodic' and 'revision'",
        )),
    }
}

/// Splits a listen URL list into etcd's `unix://host:port` sockets (the file `host:port`, in
/// the working directory) and the other URLs, joined again with commas.
pub(super) fn split_unix(
    flag: &'static str,
    raw: &str,
) -> Result<(Vec<PathBuf>, String), ConfigError> {
    let mut unix = Vec::new();
    let mut rest = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(addr) = part.strip_prefix("unix://") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty() && !p.contains('/'));
            if addr.contains('/') {
                return Err(invalid(
                    flag,
                    part,
                    format!("URL must not contain a path: {part}"),
                ));
            }
            if !ok {
                return Err(invalid(
                    flag,
                    part,
                    format!("URL address does not have the form \"host:port\": {part}"),
                ));
            }
            unix.push(PathBuf::from(addr));
        } else if part.starts_with("unixs://") {
            return Err(invalid(
                flag,
                part,
                format!("--{flag}=\"{part}\" is not supported by oxcd: TLS over a unix socket is not served; use unix:// or https://"),
            ));
        } else {
            rest.push(part);
        }
    }
    Ok((unix, rest.join(",")))
}

/// `--cors`: `*` (or nothing) for any origin, else etcd's URL list: each `scheme://host:port`
/// with scheme http, https, unix or unixs and no path, kept as written (scheme lowercased).
pub(super) fn cors(raw: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let raw = raw.trim();
    if raw.is_empty() || raw == "*" {
        return Ok(None);
    }
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim) {
        let (scheme, rest) = item.split_once("://").unwrap_or(("", item));
        let scheme = scheme.to_ascii_lowercase();
        if !["http", "https", "unix", "unixs"].contains(&scheme.as_str()) {
            return Err(invalid(
                "cors",
                item,
                format!("URL scheme must be http, https, unix, or unixs: {item}"),
            ));
        }
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
        if rest.contains('/') {
            return Err(invalid(
                "cors",
                item,
                format!("URL must not contain a path: {item}"),
            ));
        }
        if host.is_empty() || port.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid(
                "cors",
                item,
                format!("URL address does not have the form \"host:port\": {item}"),
            ));
        }
        out.push(format!("{scheme}://{rest}"));
    }
    Ok(Some(out))
}

/// `--host-whitelist`: `*` (or nothing) for any host, else the names as given (etcd neither
/// trims nor lowercases them).
pub(super) fn host_whitelist(raw: &str) -> Option<Vec<String>> {
    if raw.is_empty() || raw.split(',').any(|h| h == "*") {
        return None;
    }
    Some(raw.split(',').map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_and_host_whitelist_take_etcds_forms() {
        assert_eq!(cors("*").ok(), Some(None));
        assert_eq!(
            cors("HTTP://a.example:8080, https://b:1").ok(),
            Some(Some(vec![
                "http://a.example:8080".to_string(),
                "https://b:1".to_string()
            ]))
        );
        let err = |raw: &str| cors(raw).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("http://a.example").contains("does not have the form \"host:port\""));
        assert!(err("http://a.example:80/").contains("must not contain a path"));
        assert!(err("ftp://a:1").contains("URL scheme must be http, https, unix, or unixs"));
        let (unix, rest) = split_unix("listen-client-urls", "http://a:1, unix://localhost:2379")
            .unwrap_or_default();
        assert_eq!(unix, [PathBuf::from("localhost:2379")]);
        assert_eq!(rest, "http://a:1");
        assert!(split_unix("listen-client-urls", "unix:///tmp/x.sock").is_err());
        assert!(split_unix("listen-client-urls", "unixs://localhost:1").is_err());
        assert_eq!(host_whitelist("*"), None);
        assert_eq!(
            host_whitelist("a, B"),
            Some(vec!["a".to_string(), " B".to_string()])
        );
    }
}

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
