//! TLS with etcd's flags: a three-member cluster whose peers talk TLS with each other and whose
//! clients must present a certificate (`--client-cert-auth`), driven by the real `etcdctl` with
//! `--cacert/--cert/--key` and `curl`; a client without a certificate is refused, and with
//! authentication on the certificate's common name is the user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::*;

/// A test PKI: a CA, a server certificate for 127.0.0.1 and client certificates by name.
struct Pki {
    dir: tempfile::TempDir,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oxcd test CA");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = params.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Pki {
            dir,
            ca_params: params,
            ca_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `name.pem` / `name.key` with common name `cn`, valid for 127.0.0.1 and localhost.
    fn issue(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

/// The member processes; killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn tls_ctl(endpoints: &str, pki: &Pki, cert: Option<&str>, args: &[&str]) -> Ctl {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .arg(format!("--cacert={}", s(&pki.path("ca.pem"))));
    if let Some(name) = cert {
        cmd.arg(format!("--cert={}", s(&pki.path(&format!("{name}.pem")))))
            .arg(format!("--key={}", s(&pki.path(&format!("{name}.key")))));
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
        .into()
}

#[tokio::test]
async fn mutual_tls_for_clients_and_peers_on_a_three_member_cluster() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", "server");
    pki.issue("client", "client");
    pki.issue("root", "root");
    let ca = pki.path("ca.pem");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(Vec::new());
    for (i, (c, p)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
        let child = Command::new(oxcd_bin())
            .args([
                format!("--name=m{i}"),
                format!("--data-dir={}", s(&dir.path().join(format!("m{i}")))),
                format!("--listen-client-urls=https://127.0.0.1:{c}"),
                format!("--advertise-client-urls=https://127.0.0.1:{c}"),
                format!("--listen-peer-urls=https://127.0.0.1:{p}"),
                format!("--initial-advertise-peer-urls=https://127.0.0.1:{p}"),
                format!("--initial-cluster={initial}"),
                format!("--cert-file={}", s(&cert)),
                format!("--key-file={}", s(&key)),
                format!("--trusted-ca-file={}", s(&ca)),
                "--client-cert-auth".to_string(),
                format!("--peer-cert-file={}", s(&cert)),
                format!("--peer-key-file={}", s(&key)),
                format!("--peer-trusted-ca-file={}", s(&ca)),
                "--peer-client-cert-auth".to_string(),
            ])
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn oxcd");
        procs.0.push(child);
    }
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    wait_until("the TLS cluster to elect a leader and serve", WAIT, || {
        let ok = tls_ctl(&endpoints, &pki, Some("client"), &["endpoint", "health"]);
        async move { ok.ok }
    })
    .await;

    let put = tls_ctl(&endpoints, &pki, Some("client"), &["put", "foo", "bar"]);
    assert_eq!(put.stdout, "OK\n", "{put:?}");
    for (c, _) in &ports {
        let get = tls_ctl(
            &format!("127.0.0.1:{c}"),
            &pki,
            Some("client"),
            &["get", "foo", "--consistency=s"],
        );
        assert_eq!(get.stdout, "foo\nbar\n", "member on {c}: {get:?}");
    }
    let status = tls_ctl(
        &endpoints,
        &pki,
        Some("client"),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");

    // Without a client certificate the handshake is refused, for gRPC and HTTP alike.
    let refused = tls_ctl(&endpoints, &pki, None, &["get", "foo"]);
    assert!(!refused.ok, "{refused:?}");
    let first = format!("https://127.0.0.1:{}/health", ports[0].0);
    let no_cert = Command::new("curl")
        .args(["-s", "--cacert", &s(&ca), &first])
        .output()
        .expect("curl");
    assert!(!no_cert.status.success());
    let with_cert = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            &s(&ca),
            "--cert",
            &s(&pki.path("client.pem")),
            "--key",
            &s(&pki.path("client.key")),
            &first,
        ])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&with_cert.stdout),
        r#"{"health":"true","reason":""}"#
    );

    // With authentication on, the certificate's common name is the user: no password needed.
    for args in [
        &["user", "add", "root:pw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "foo"],
        &["user", "add", "client:pw"],
        &["user", "grant-role", "client", "reader"],
        &["auth", "enable"],
    ] {
        let out = tls_ctl(&endpoints, &pki, Some("client"), args);
        assert!(out.ok, "{args:?}: {out:?}");
    }
    let read = tls_ctl(&endpoints, &pki, Some("client"), &["get", "foo"]);
    assert_eq!(read.stdout, "foo\nbar\n", "{read:?}");
    let write = tls_ctl(&endpoints, &pki, Some("client"), &["put", "foo", "x"]);
    assert_eq!(error_line(&write), "Error: etcdserver: permission denied");
    let root = tls_ctl(&endpoints, &pki, Some("root"), &["put", "foo", "y"]);
    assert_eq!(root.stdout, "OK\n", "{root:?}");
    let off = tls_ctl(&endpoints, &pki, Some("root"), &["auth", "disable"]);
    assert!(off.ok, "{off:?}");
}

#[tokio::test]
async fn auto_tls_serves_https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, p) = (free_port(), free_port());
    let data = dir.path().join("auto");
    let log = std::fs::File::create(dir.path().join("auto.log")).expect("log");
    let child = Command::new(oxcd_bin())
        .args([
            format!("--data-dir={}", s(&data)),
            format!("--listen-client-urls=https://127.0.0.1:{c}"),
            format!("--advertise-client-urls=https://127.0.0.1:{c}"),
            format!("--listen-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-cluster=default=http://127.0.0.1:{p}"),
            "--auto-tls".to_string(),
        ])
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn oxcd");
    let _procs = Procs(vec![child]);
    let ep = format!("127.0.0.1:{c}");
    let ctl = |args: &[&str]| -> Ctl {
        Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args([
                "--dial-timeout=3s",
                "--insecure-skip-tls-verify",
                "--insecure-transport=false",
            ])
            .args(args)
            .output()
            .expect("run etcdctl")
            .into()
    };
    wait_until("the auto-TLS member to serve", WAIT, || {
        let ok = ctl(&["endpoint", "health"]).ok;
        async move { ok }
    })
    .await;
    assert_eq!(ctl(&["put", "k", "v"]).stdout, "OK\n");
    // The generated certificate sits under the data directory, as etcd's.
    assert!(data.join("fixtures/client/cert.pem").exists());
    // Plain HTTP is not served on an https URL.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{ep}/health")])
        .output()
        .expect("curl");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("\"health\":\"true\""));
    let https = Command::new("curl")
        .args(["-sk", &format!("https://{ep}/health")])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&https.stdout),
        r#"{"health":"true","reason":""}"#
    );
}

/// etcd's TLS protocol flags and revocation lists: with `--tls-max-version=TLS1.2` and one
/// cipher suite, a client offering TLS 1.3 only, or only another suite, fails its handshake while
/// one offering that suite works; with `--client-crl-file` a client whose certificate the CA
/// revoked is refused and another client is served.
#[tokio::test]
async fn tls_versions_cipher_suites_and_revocation_lists() {
    use rustls_pki_types::pem::PemObject;
    let pki = Pki::new();
    pki.issue("server", "server");
    pki.issue("alice", "alice");
    let (mallory, _) = pki.issue("mallory", "mallory");
    // A CRL from the CA revoking mallory's certificate (by its serial number).
    let der = rustls_pki_types::CertificateDer::from_pem_file(&mallory).expect("mallory's cert");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let serial = rcgen::SerialNumber::from_slice(parsed.raw_serial());
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: serial,
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&rcgen::Issuer::from_params(&pki.ca_params, &pki.ca_key))
    .expect("sign the CRL");
    std::fs::write(pki.path("crl.pem"), crl.pem().expect("CRL pem")).expect("write CRL");

    let dir = tempfile::tempdir().expect("tempdir");
    let (c, p) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("m.log")).expect("log");
    let child = Command::new(oxcd_bin())
        .args([
            format!("--data-dir={}", s(&dir.path().join("m"))),
            format!("--listen-client-urls=https://127.0.0.1:{c}"),
            format!("--advertise-client-urls=https://127.0.0.1:{c}"),
            format!("--listen-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-cluster=default=http://127.0.0.1:{p}"),
            format!("--cert-file={}", s(&pki.path("server.pem"))),
            format!("--key-file={}", s(&pki.path("server.key"))),
            format!("--trusted-ca-file={}", s(&pki.path("ca.pem"))),
            "--client-cert-auth".to_string(),
            format!("--client-crl-file={}", s(&pki.path("crl.pem"))),
            "--tls-max-version=TLS1.2".to_string(),
            "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string(),
        ])
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn oxcd");
    let _procs = Procs(vec![child]);
    let ep = format!("127.0.0.1:{c}");
    wait_until("the TLS member to serve", WAIT, || {
        let ok = tls_ctl(&ep, &pki, Some("alice"), &["endpoint", "health"]).ok;
        async move { ok }
    })
    .await;
    assert_eq!(
        tls_ctl(&ep, &pki, Some("alice"), &["put", "k", "v"]).stdout,
        "OK\n"
    );
    let revoked = tls_ctl(&ep, &pki, Some("mallory"), &["put", "k", "x"]);
    assert!(!revoked.ok, "a revoked certificate is refused: {revoked:?}");

    let curl = |extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(pki.path("ca.pem"))
            .arg("--cert")
            .arg(pki.path("alice.pem"))
            .arg("--key")
            .arg(pki.path("alice.key"))
            .args(extra)
            .arg(format!("https://{ep}/health"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let healthy = r#"{"health":"true","reason":""}"#;
    assert_eq!(curl(&["--tlsv1.2", "--tls-max", "1.2"]), healthy);
    assert_eq!(
        curl(&[
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        ]),
        healthy
    );
    assert_eq!(
        curl(&[
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-ECDSA-AES256-GCM-SHA384"
        ]),
        "",
        "a suite outside --cipher-suites"
    );
    assert_eq!(curl(&["--tlsv1.3"]), "", "TLS 1.3 above --tls-max-version");
}
