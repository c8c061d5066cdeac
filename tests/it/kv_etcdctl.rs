//! etcd's KV tutorial through the real `etcdctl` 3.5, run side by side against the real etcd and
//! oxcd: every command must print exactly what it prints against etcd (IDs and terms in JSON output
//! aside), and the outputs a user reads are also pinned literally.

use crate::harness::{compare, error_line, etcdctl, step, Cluster, Kind, Step};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_kv_matches_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let (e, o) = (etcd.endpoints(), oxcd.endpoints());

    // Writes and reads of the tutorial.
    let outs = compare(
        &e,
        &o,
        &[
            step(&["put", "foo", "bar"]),
            step(&["put", "foo1", "bar1"]),
            step(&["put", "foo2", "bar2"]),
            step(&["put", "foo3", "bar3"]),
            step(&["get", "foo"]),
            step(&["get", "--prefix", ""]),
            step(&["get", "--prefix", "foo"]),
            step(&["get", "--prefix", "--limit=2", "foo"]),
            step(&["get", "foo", "--print-value-only"]),
            step(&["get", "foo", "--keys-only"]),
            step(&["get", "foo", "foo3"]),
            step(&["get", "foo", "-w=json"]),
            step(&["get", "--from-key", "foo1"]),
            step(&[
                "get",
                "--prefix",
                "foo",
                "--sort-by=MODIFY",
                "--order=DESCEND",
            ]),
            step(&["get", "--prefix", "foo", "--count-only", "-w=json"]),
            step(&["get", "nosuchkey"]),
        ],
    );
    assert_eq!(outs[0].stdout, "OK\n");
    assert_eq!(outs[4].stdout, "foo\nbar\n");
    assert_eq!(outs[7].stdout, "foo\nbar\nfoo1\nbar1\n");
    assert_eq!(outs[8].stdout, "bar\n");
    assert_eq!(outs[9].stdout, "foo\n\n");
    assert_eq!(outs[10].stdout, "foo\nbar\nfoo1\nbar1\nfoo2\nbar2\n");
    let json: serde_json::Value =
        serde_json::from_str(&outs[11].stdout).expect("get -w=json prints JSON");
    assert_eq!(json["header"]["revision"], 5);
    assert!(json["header"]["cluster_id"].as_u64().unwrap_or(0) != 0);
    assert!(json["header"]["member_id"].as_u64().unwrap_or(0) != 0);
    assert!(json["header"]["raft_term"].as_u64().unwrap_or(0) != 0);
    assert_eq!(json["kvs"][0]["key"], "Zm9v");
    assert_eq!(json["kvs"][0]["value"], "YmFy");
    assert_eq!(json["count"], 1);

    // The tutorial's revision walk: the keys as of each revision.
    let mut walk = vec![
        step(&["put", "foo1", "bar1"]),
        step(&["put", "foo", "bar_new"]),
        step(&["put", "foo1", "bar1_new"]),
    ];
    for rev in 1..=8 {
        walk.push(step(&[
            "get",
            "--keys-only",
            &format!("--rev={rev}"),
            "--prefix",
            "",
        ]));
        walk.push(step(&["get", "foo", &format!("--rev={rev}")]));
    }
    walk.push(step(&["get", "foo", "--rev=9"]));
    let outs = compare(&e, &o, &walk);
    assert_eq!(outs[3].stdout, "", "nothing existed at revision 1");
    assert_eq!(outs[5].stdout, "foo\n\n", "only foo at revision 2");
    assert!(
        !outs.last().expect("last").ok,
        "revision 9 is in the future"
    );

    // Deletes.
    let outs = compare(
        &e,
        &o,
        &[
            step(&["del", "foo1"]),
            step(&["del", "--prev-kv", "foo"]),
            step(&["put", "foo", "again"]),
            step(&["del", "foo", "foo3"]),
            step(&["put", "foo", "x"]),
            step(&["put", "foo9", "y"]),
            step(&["del", "--prefix", "foo"]),
            step(&["del", "nosuchkey"]),
            step(&["get", "--prefix", ""]),
        ],
    );
    assert_eq!(outs[0].stdout, "1\n");
    assert_eq!(outs[1].stdout, "1\nfoo\nbar_new\n");
    assert_eq!(outs[3].stdout, "2\n", "foo and foo2 are in [foo, foo3)");
    assert_eq!(outs[6].stdout, "3\n");
    assert_eq!(outs[7].stdout, "0\n");

    // Compaction and reads below it.
    let outs = compare(
        &e,
        &o,
        &[
            step(&["put", "k", "v1"]),
            step(&["put", "k", "v2"]),
            step(&["compact", "16"]),
            step(&["get", "k", "--rev=15"]),
            step(&["get", "k", "--rev=16"]),
            step(&["compact", "10"]),
            step(&["compact", "100"]),
            step(&["compaction", "--physical", "17"]),
        ],
    );
    assert_eq!(outs[2].stdout, "compacted revision 16\n");
    assert_eq!(
        error_line(&outs[3]),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(outs[4].stdout, "k\nv1\n");
    assert_eq!(outs[7].stdout, "compacted revision 17\n");

    // Transactions, both branches, through etcdctl's interactive syntax.
    let mut txns = vec![
        step(&["put", "user1", "bad"]),
        Step {
            args: vec!["txn".into(), "-i".into()],
            stdin: Some("value(\"user1\") = \"bad\"\n\ndel user1\nput ok yes\n\nput user1 good\n\n"),
        },
        Step {
            args: vec!["txn".into(), "-i".into()],
            stdin: Some("value(\"user1\") = \"bad\"\n\ndel user1\n\nput user1 good\nget ok\n\n"),
        },
        Step {
            args: vec!["txn".into(), "-i".into(), "-w=json".into()],
            stdin: Some(
                "mod(\"user1\") > \"0\"\nversion(\"ok\") = \"1\"\ncreate(\"nokey\") = \"0\"\n\nget user1\nput x y\n\nput never here\n\n",
            ),
        },
    ];
    txns.push(step(&["get", "--prefix", ""]));
    let outs = compare(&e, &o, &txns);
    let prompts =
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";
    assert_eq!(outs[1].stdout, format!("{prompts}SUCCESS\n\n1\n\nOK\n"));
    assert_eq!(
        outs[2].stdout,
        format!("{prompts}FAILURE\n\nOK\n\nok\nyes\n")
    );

    // Errors etcdctl shows for bad input.
    let outs = compare(
        &e,
        &o,
        &[
            step(&["put", "", "v"]),
            step(&["get", "k", "--rev=-1"]),
            step(&["get", "--prefix", "", "--sort-by=BOGUS"]),
        ],
    );
    assert_eq!(
        error_line(&outs[0]),
        "Error: etcdserver: key is not provided"
    );
    // The servers keep serving after bad input.
    let c = etcdctl(&o, &["get", "k"]);
    assert!(c.ok, "{c:?}");
    assert_eq!(c.stdout, "k\nv2\n");
}
