//! Unit tests of etcd's other names: every form (flag, environment, config file) ends in the
//! same setting, a refusal names what the user wrote, and no name is both a setting and here.

use super::super::flags::SETTINGS;
use super::super::{Config, Flags};
use super::*;
use clap::Parser;

fn args(a: &[&str]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut v: Vec<std::ffi::OsString> = vec!["oxcd".into()];
    v.extend(a.iter().map(Into::into));
    let (out, notices) = super::super::translate_args(v)?;
    Ok((
        out.into_iter()
            .skip(1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect(),
        notices,
    ))
}

#[test]
fn no_name_is_both_a_setting_and_an_etcd_name() {
    for n in NAMES {
        assert!(!SETTINGS.contains(&n.name), "{} is a setting", n.name);
        if let Handling::Alias(to) = n.handling {
            assert!(
                SETTINGS.contains(&to),
                "{} aliases {to}, not a setting",
                n.name
            );
        }
        assert_eq!(
            NAMES.iter().filter(|m| m.name == n.name).count(),
            1,
            "{}",
            n.name
        );
    }
}

#[test]
fn flags_are_aliased_dropped_or_refused_by_name() {
    let (out, notices) = args(&[
        "--name",
        "a",
        "--experimental-watch-progress-notify-interval=5s",
        "--corrupt-check-time",
        "1m",
        "--unsafe-no-fsync=false",
        "--enable-v2=false",
        "--backend-batch-limit",
        "10",
        "--enable-grpc-gateway",
    ])
    .expect("accepted");
    assert_eq!(
        out,
        [
            "--name",
            "a",
            "--watch-progress-notify-interval=5s",
            "--experimental-corrupt-check-time",
            "1m",
        ]
    );
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].starts_with("--backend-batch-limit is accepted"),
        "{notices:?}"
    );
    let f = Flags::try_parse_from(std::iter::once("oxcd".to_string()).chain(out)).expect("parse");
    let s = Config::load(&f).and_then(|c| c.validate()).expect("valid");
    assert_eq!(s.watch_progress_notify_interval, Duration::from_secs(5));
    assert_eq!(s.corrupt_check_interval, Some(Duration::from_secs(60)));

    let e = args(&["--unsafe-no-fsync"]).expect_err("refused");
    assert_eq!(
        e,
        "--unsafe-no-fsync=\"true\" is not supported by oxcd: every log append is fsynced"
    );
    let e = args(&[
        "--corrupt-check-time=1m",
        "--experimental-corrupt-check-time=2m",
    ])
    .expect_err("both names");
    assert_eq!(
        e,
        "cannot set --experimental-corrupt-check-time and --corrupt-check-time at the same time, please use --corrupt-check-time only"
    );
    // A subcommand's own flags are left to it.
    let (out, _) = args(&["snapshot", "status", "--proxy=on"]).expect("untouched");
    assert_eq!(out, ["snapshot", "status", "--proxy=on"]);
    use std::time::Duration;
}

#[test]
fn environment_names_are_checked() {
    let vars = |v: &[(&str, &str)]| {
        check_env(
            v.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            SETTINGS,
        )
    };
    assert_eq!(vars(&[("ETCD_NAME", "x"), ("ETCD_CORS", "*")]), Ok(vec![]));
    let e = vars(&[("ETCD_UNSAFE_NO_FSYNC", "true")]).expect_err("refused");
    assert!(
        e.starts_with("ETCD_UNSAFE_NO_FSYNC=\"true\" is not supported by oxcd"),
        "{e}"
    );
    let n = vars(&[
        ("ETCD_MAX_WALS", "3"),
        ("ETCD_NO_SUCH_THING", "1"),
        ("OXCD_POD_NAME", "p"),
    ])
    .expect("accepted");
    assert_eq!(n.len(), 2, "{n:?}");
    assert!(n[0].starts_with("ETCD_MAX_WALS is accepted"), "{n:?}");
    assert_eq!(n[1], "unrecognized environment variable ETCD_NO_SUCH_THING");
    let e = vars(&[
        ("ETCD_COMPACTION_BATCH_LIMIT", "5"),
        ("ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT", "6"),
    ])
    .expect_err("both names");
    assert!(
        e.starts_with(
            "cannot set --experimental-compaction-batch-limit and --compaction-batch-limit"
        ),
        "{e}"
    );
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type.
fn config_files_read_etcds_transport_blocks_and_other_names() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "etcd.yml",
            "name: m1\n\
             experimental-watch-progress-notify-interval: 7s\n\
             backend-batch-interval: 10000000\n\
             client-transport-security:\n  cert-file: /c.crt\n  key-file: /c.key\n  client-cert-auth: true\n  trusted-ca-file: /ca.crt\n\
             peer-transport-security:\n  cert-file: /p.crt\n  key-file: /p.key\n  trusted-ca-file: /pca.crt\n  client-cert-auth: true\n  allowed-cn: []\n",
        )?;
        let f = Flags {
            config_file: Some("etcd.yml".into()),
            ..Flags::default()
        };
        let c = Config::load(&f).map_err(|e| e.to_string())?;
        assert_eq!(c.cert_file, "/c.crt");
        assert_eq!(c.key_file, "/c.key");
        assert!(c.client_cert_auth);
        assert_eq!(c.trusted_ca_file, "/ca.crt");
        assert_eq!(c.peer_cert_file, "/p.crt");
        assert_eq!(c.peer_key_file, "/p.key");
        assert_eq!(c.peer_trusted_ca_file, "/pca.crt");
        assert!(c.peer_client_cert_auth);
        assert_eq!(c.watch_progress_notify_interval, "7s");
        assert_eq!(c.notices.len(), 1, "{:?}", c.notices);
        assert!(c.notices[0].starts_with("backend-batch-interval in etcd.yml is accepted"));

        jail.create_file(
            "bad.yml",
            "peer-transport-security:\n  allowed-cn: [etcd-peer]\n",
        )?;
        let f = Flags {
            config_file: Some("bad.yml".into()),
            ..Flags::default()
        };
        let e = Config::load(&f).expect_err("refused").to_string();
        assert!(
            e.starts_with("peer-transport-security.allowed-cn in bad.yml=\"etcd-peer\" is not supported by oxcd"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn feature_gates_follow_etcd() {
    let g = feature_gates(
        "InitialCorruptCheck=true, LeaseCheckpoint=true,TxnModeWriteWithSharedBuffer=false",
    )
    .expect("valid");
    assert!(g.initial_corrupt_check && g.lease_checkpoint);
    assert_eq!(
        feature_gates("Nope=true"),
        Err("unrecognized feature gate: Nope".into())
    );
    assert_eq!(
        feature_gates("LeaseCheckpoint"),
        Err("missing bool value for LeaseCheckpoint".into())
    );
    assert!(feature_gates("CompactHashCheck=true").is_err());
    assert!(feature_gates("CompactHashCheck=false").is_ok());
}
