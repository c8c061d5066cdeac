//! Unit tests of configuration layering and validation.

use super::*;
use clap::Parser;
use std::time::Duration;

fn flags(args: &[&str]) -> Flags {
    let mut v = vec!["oxcd"];
    v.extend_from_slice(args);
    Flags::try_parse_from(v).expect("flags parse")
}

#[test]
fn defaults_match_etcd() {
    let s = Config::default().validate().expect("valid");
    assert_eq!(s.name, "default");
    assert_eq!(s.data_dir, PathBuf::from("default.oxcd"));
    assert_eq!(
        s.listen_client,
        vec!["127.0.0.1:2379".parse().expect("addr")]
    );
    assert_eq!(
        s.initial_cluster,
        vec![(
            "default".to_string(),
            vec!["http://localhost:2380".to_string()]
        )]
    );
    assert_eq!(s.max_txn_ops, 128);
    assert_eq!(s.max_request_bytes, 1_572_864);
    assert_eq!(s.auto_compaction, None);
}

#[test]
fn unknown_flag_is_rejected() {
    assert!(Flags::try_parse_from(["oxcd", "--no-such-flag", "1"]).is_err());
}

#[test]
fn bad_values_are_rejected_with_the_flag_name() {
    let c = Config {
        initial_cluster_state: "bogus".into(),
        ..Config::default()
    };
    let e = c.validate().expect_err("invalid").to_string();
    assert!(e.contains("initial-cluster-state"), "{e}");
    let c = Config {
        listen_client_urls: "http://example.com:2379".into(),
        ..Config::default()
    };
    let e = c.validate().expect_err("invalid").to_string();
    assert!(e.contains("expected IP in URL for binding"), "{e}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type.
fn layering_flags_over_env_over_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "oxcd.yml",
            "name: from-file\nmax-txn-ops: 64\nmax-request-bytes: 2048\nlog-outputs: [stderr]\n",
        )?;
        jail.set_env("ETCD_MAX_TXN_OPS", "32");
        jail.set_env("ETCD_NAME", "from-env");
        let f = flags(&["--config-file", "oxcd.yml", "--name", "from-flag"]);
        let c = Config::load(&f).map_err(|e| e.to_string())?;
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.max_txn_ops, 32);
        assert_eq!(c.max_request_bytes, 2048);
        assert_eq!(c.log_outputs, "stderr");
        Ok(())
    });
}

#[test]
fn bad_numbers_name_the_setting() {
    let f = flags(&["--max-txn-ops", "abc"]);
    let e = Config::load(&f).expect_err("invalid").to_string();
    assert!(e.contains("max-txn-ops"), "{e}");
}

#[test]
fn example_config_files_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let f = Flags {
            config_file: Some(path.clone()),
            ..Flags::default()
        };
        let c = Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        c.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n > 0, "no example config files found");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("abc"), None);
}

#[test]
fn boolean_flags_may_be_bare_and_lease_checkpoints_follow_etcd() {
    let settings = |args: &[&str]| Config::load(&flags(args)).and_then(|c| c.validate());
    let s = settings(&[]).expect("defaults");
    assert_eq!(s.lease_checkpoint_interval, None);
    assert!(s.strict_reconfig_check);

    let s = settings(&[
        "--experimental-enable-lease-checkpoint",
        "--experimental-lease-checkpoint-interval=30s",
        "--strict-reconfig-check=false",
    ])
    .expect("bare boolean flag");
    assert_eq!(s.lease_checkpoint_interval, Some(Duration::from_secs(30)));
    assert!(!s.strict_reconfig_check);

    let s = settings(&["--experimental-enable-lease-checkpoint=true"]).expect("valid");
    assert_eq!(s.lease_checkpoint_interval, Some(Duration::from_secs(300)));

    let e = settings(&["--experimental-enable-lease-checkpoint-persist"])
        .expect_err("persist needs checkpoints, as in etcd");
    assert!(
        e.to_string()
            .contains("experimental-enable-lease-checkpoint"),
        "{e}"
    );
    // A flag that takes a value still needs one.
    assert!(Flags::try_parse_from(["oxcd", "--name"]).is_err());
}
