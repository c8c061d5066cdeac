//! TLS for clients and peers with etcd's flags: certificates from PEM files (or generated with
//! `--auto-tls`/`--peer-auto-tls`), optional client-certificate verification against a trusted
//! CA and certificate revocation lists, the protocol versions and TLS 1.2 cipher suites of
//! `--tls-min-version`, `--tls-max-version` and `--cipher-suites`, ALPN for HTTP/2 and HTTP/1.1
//! on the client port, and the connector peers dial each other with.
//!
//! Invariants: with `--client-cert-auth` (or `--peer-client-cert-auth`) a connection without a
//! certificate signed by the trusted CA (and not revoked by the CRL file) never reaches a
//! handler; no version or suite outside the configured ones is ever negotiated; a peer dialing over TLS verifies
//! the other side against `--peer-trusted-ca-file`, and skips verification only with
//! `--peer-auto-tls` and no trusted CA, as etcd does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use crate::config::tls_opts::{Protocol, TlsVersion};
use crate::config::TlsSettings;

/// Failures setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// No certificate is configured.
    #[error("no TLS certificate: give --{0}cert-file and --{0}key-file, or --{0}auto-tls")]
    NoIdentity(&'static str),
    /// Peers over TLS need a CA to verify each other (only auto TLS goes without).
    #[error("--peer-trusted-ca-file is needed to verify peers over TLS (or use --peer-auto-tls)")]
    NoTrustedCa,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    /// A certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

fn file_err(path: &Path, msg: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// The host names and addresses a generated certificate should cover: those of the advertised
/// URLs, plus the loopback names.
pub fn hosts_of(urls: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .filter_map(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .collect();
    for h in ["localhost", "127.0.0.1"] {
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_string());
        }
    }
    hosts
}

/// The certificates in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// The certificate revocation lists in a PEM file (`--client-crl-file`, `--peer-crl-file`).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if crls.is_empty() {
        return Err(file_err(path, "no certificate revocation list in file"));
    }
    Ok(crls)
}

/// rustls' ring provider with the TLS 1.2 suites `p` allows (TLS 1.3's are always kept).
fn provider_for(p: &Protocol) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !p.tls12_suites.is_empty() {
        provider.cipher_suites.retain(|cs| match cs {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => {
                let name = format!("{:?}", cs.suite());
                p.tls12_suites.contains(&name)
            }
        });
    }
    Arc::new(provider)
}

/// The protocol versions between `p`'s minimum and maximum.
fn versions_for(p: &Protocol) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if p.min <= TlsVersion::Tls12 && p.max >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    if p.max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    v
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(store)
}

/// The certificate and key to present: the configured files, or a self-signed pair generated
/// (once) into `dir` for `hosts`.
fn identity(
    s: &TlsSettings,
    dir: &Path,
    hosts: &[String],
    side: &'static str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
        return Ok((load_certs(cert)?, load_key(key)?));
    }
    if !s.auto {
        return Err(TlsError::NoIdentity(side));
    }
    let (cert, key) = self_signed(dir, hosts, s.validity_years)?;
    Ok((load_certs(&cert)?, load_key(&key)?))
}

/// Generates (or reuses) a self-signed certificate for `hosts` in `dir`, as etcd's auto TLS does
/// under the data directory; returns the certificate and key paths.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    years: u64,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".to_string());
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "oxcd");
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years.clamp(1, 100) as i32, 12, 31);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
    Ok((cert_path, key_path))
}

/// The current calendar year (UTC), close enough for certificate validity bounds.
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// The server side of one listener kind (`side` is `""` for clients, `"peer-"` for peers).
pub fn server_config(
    s: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
    side: &'static str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = identity(s, auto_dir, hosts, side)?;
    let provider = provider_for(&s.protocol);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions_for(&s.protocol))?;
    let builder = match &s.trusted_ca_file {
        Some(ca) => {
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider.clone(),
            );
            if let Some(crl) = &s.crl_file {
                verifier = verifier.with_crls(load_crls(crl)?);
            }
            if !s.client_cert_auth {
                // A client may present a certificate (for its common name); none is required.
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the server side of a TLS handshake on `stream` with a deadline; a failed or slow
/// handshake is logged (as `side`) and drops only this connection.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    side: &str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, side, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(side, "TLS handshake timed out");
            None
        }
    }
}

/// The common name of a certificate's subject, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Accepts any server certificate: peers with `--peer-auto-tls` and no trusted CA, as etcd's
/// auto TLS does (its certificates are self-signed).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client side peers dial each other with: verifies against the trusted CA (or accepts any
/// certificate under peer auto TLS without one) and presents the peer certificate.
pub fn peer_client_config(
    s: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider_for(&s.protocol);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions_for(&s.protocol))?;
    let builder = match &s.trusted_ca_file {
        Some(ca) => builder.with_root_certificates(roots(ca)?),
        None if s.auto => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        None => return Err(TlsError::NoTrustedCa),
    };
    let mut config = match identity(s, auto_dir, hosts, "peer-") {
        Ok((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        Err(TlsError::NoIdentity(_)) => builder.with_no_client_auth(),
        Err(e) => return Err(e),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// rustls' client configuration, for modules that dial through [`TlsConnector`].
pub type ClientTlsConfig = ClientConfig;

/// A client-side configuration for dialing `https` client URLs (oxcd's own client commands and
/// the pod join logic): verifies against `trusted_ca` (or accepts any certificate when `insecure`,
/// as etcdctl's `--insecure-skip-tls-verify`), and presents `cert`/`key` when both are given.
pub fn client_config(
    trusted_ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (trusted_ca, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        (Some(ca), false) => builder.with_root_certificates(roots(ca)?),
        (None, false) => return Err(TlsError::NoTrustedCa),
    };
    let mut config = match cert_key {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

static PEER_CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets the TLS configuration peers dial `https` peer URLs with (once per process: one process
/// is one member).
pub fn set_peer_client(config: Arc<ClientConfig>) {
    let _ = PEER_CLIENT.set(config);
}

/// The TLS configuration for dialing `https` peer URLs, if one was set.
pub fn peer_client() -> Option<Arc<ClientConfig>> {
    PEER_CLIENT.get().cloned()
}

/// A tower connector that dials TCP and runs a TLS handshake with `config` (the URI's host is the
/// server name). Used for `https` peer URLs.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    /// A connector over `config`.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector { config }
    }
}

type ConnectFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let port = uri.port_u16().unwrap_or(2380);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::other(format!("server name {host}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
