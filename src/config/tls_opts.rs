//! etcd's TLS protocol flags, checked: `--tls-min-version`, `--tls-max-version` and
//! `--cipher-suites` (Go's names), which apply to client and peer TLS alike.
//!
//! Invariants: a setting either maps onto what rustls serves (TLS 1.2 and 1.3, the AEAD suites
//! with ECDHE) or is refused at start-up: with etcd's own error for a name etcd does not know,
//! with a "not supported by oxcd" reason for one etcd knows but rustls does not offer (TLS 1.0 and
//! 1.1, CBC, RC4 and 3DES suites, RSA key exchange).

use super::{invalid, ConfigError};

/// A TLS protocol version oxcd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The protocol settings of a TLS listener or dialer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Lowest version offered.
    pub min: TlsVersion,
    /// Highest version offered.
    pub max: TlsVersion,
    /// TLS 1.2 suites allowed, as rustls names them (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`);
    /// empty for all of them.
    pub tls12_suites: Vec<String>,
}

impl Default for Protocol {
    fn default() -> Protocol {
        Protocol {
            min: TlsVersion::Tls12,
            max: TlsVersion::Tls13,
            tls12_suites: Vec::new(),
        }
    }
}

/// The TLS 1.2 suites rustls offers, by Go's names (with Go's older ChaCha20 aliases).
const SUPPORTED: [(&str, &str); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// TLS 1.3 suites (always on) and the suites Go knows that rustls does not offer.
const TLS13: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];
const UNSUPPORTED: [&str; 16] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

fn version(flag: &'static str, v: &str) -> Result<Option<TlsVersion>, ConfigError> {
    match v {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
        "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
        "TLS1.0" | "TLS1.1" => Err(invalid(
            flag,
            v,
            format!(
                "--{flag}=\"{v}\" is not supported by oxcd: rustls serves TLS 1.2 and 1.3 only"
            ),
        )),
        _ => Err(invalid(
            flag,
            v,
            format!(
                "unexpected TLS version {v:?} (must be one of: TLS1.0, TLS1.1, TLS1.2, TLS1.3)"
            ),
        )),
    }
}

/// Checks etcd's three flags and turns them into the protocol settings.
pub fn protocol(suites: &str, min: &str, max: &str) -> Result<Protocol, ConfigError> {
    let lo = version("tls-min-version", min)?;
    let hi = version("tls-max-version", max)?;
    let mut p = Protocol {
        min: lo.unwrap_or(TlsVersion::Tls12),
        max: hi.unwrap_or(TlsVersion::Tls13),
        tls12_suites: Vec::new(),
    };
    if p.min > p.max {
        return Err(invalid(
            "tls-min-version",
            min,
            format!("min version ({min}) is greater than max version ({max})"),
        ));
    }
    let names: Vec<&str> = suites
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !names.is_empty() && lo == Some(TlsVersion::Tls13) {
        return Err(invalid(
            "cipher-suites",
            suites,
            "cipher suites cannot be configured when only TLS1.3 or greater is supported",
        ));
    }
    for name in names {
        if let Some((_, rustls_name)) = SUPPORTED.iter().find(|(go, _)| *go == name) {
            if !p.tls12_suites.iter().any(|s| s == rustls_name) {
                p.tls12_suites.push(rustls_name.to_string());
            }
        } else if TLS13.contains(&name) {
            // TLS 1.3's suites are always on, as in Go; naming one changes nothing.
        } else if UNSUPPORTED.contains(&name) {
            return Err(invalid(
                "cipher-suites",
                name,
                format!("--cipher-suites=\"{name}\" is not supported by oxcd: rustls offers only AEAD suites with ECDHE key exchange"),
            ));
        } else {
            return Err(invalid(
                "cipher-suites",
                name,
                format!("unexpected TLS cipher suite {name:?}"),
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_names_map_or_are_refused_with_a_reason() {
        let p = protocol(
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            "TLS1.2",
            "TLS1.2",
        )
        .expect("valid");
        assert_eq!(p.max, TlsVersion::Tls12);
        assert_eq!(
            p.tls12_suites,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(protocol("", "", "").ok(), Some(Protocol::default()));
        let msg =
            |r: Result<Protocol, ConfigError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(protocol("", "TLS1.4", "")).contains("unexpected TLS version \"TLS1.4\""));
        assert!(msg(protocol("", "TLS1.1", "")).contains("not supported by oxcd"));
        assert!(msg(protocol("", "TLS1.3", "TLS1.2"))
            .contains("min version (TLS1.3) is greater than max version (TLS1.2)"));
        assert!(
            msg(protocol("TLS_RSA_WITH_AES_128_CBC_SHA", "", "")).contains("not supported by oxcd")
        );
        assert!(msg(protocol("NOPE", "", "")).contains("unexpected TLS cipher suite \"NOPE\""));
        assert!(msg(protocol(
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS1.3",
            ""
        ))
        .contains("only TLS1.3"));
    }
}
