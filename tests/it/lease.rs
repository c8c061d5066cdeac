//! Leases: etcd's lease tutorial through the real `etcdctl` 3.5, side by side with the real etcd
//! (lease IDs differ, so each output is matched against etcd's exact shape with the ID parsed out
//! of the grant line); expiry across a three-member cluster as watchers see it; keep-alives
//! through a follower across a leader SIGKILL; and `etcdctl lock` / `etcdctl elect`, whose
//! sessions are leases.
//!
//! The literal strings were taken from etcd 3.5 and etcdctl 3.5 by hand. etcdctl prints lease IDs
//! as `%016x` in `lease ...` output, but lock and election keys end in the ID as plain `%x`.

use std::time::{Duration, Instant};

use crate::harness::{etcdctl, wait_until, Cluster, Ctl, CtlProc, Kind, WAIT};

/// The last line of stderr that starts with `Error:` (etcdctl also logs JSON warnings there).
fn error_line(c: &Ctl) -> String {
    c.stderr
        .lines()
        .rfind(|l| l.starts_with("Error:"))
        .unwrap_or("")
        .to_string()
}

/// Asserts that an etcdctl run failed with exit code `code`, printed nothing on stdout, and said
/// `error` as its `Error:` line.
fn fails(c: &Ctl, code: i32, error: &str) {
    assert_eq!(c.code, Some(code), "exit code: {c:?}");
    assert_eq!(c.stdout, "", "stdout: {c:?}");
    assert_eq!(error_line(c), error, "error line: {c:?}");
}

/// The lease ID, as etcdctl prints it (16 hex digits), from `lease grant`'s one line
/// `lease <id> granted with TTL(<ttl>s)`, after checking the whole line.
fn granted(c: &Ctl, ttl: u64) -> String {
    assert!(c.ok, "lease grant: {c:?}");
    let suffix = format!(" granted with TTL({ttl}s)\n");
    let id = c
        .stdout
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(suffix.as_str()))
        .unwrap_or_else(|| panic!("not `lease <id>{suffix}`: {c:?}"));
    assert!(
        id.len() == 16 && id.chars().all(|ch| ch.is_ascii_hexdigit()),
        "lease ID {id:?} is not 16 hex digits"
    );
    id.to_string()
}

/// The remaining seconds from `lease timetolive [--keys]`'s one line,
/// `lease <id> granted with TTL(<ttl>s), remaining(<n>s)[, attached keys(<keys>)]`, after
/// checking the whole line (`keys` is `Some("[a b]")` with `--keys`, `None` without).
fn remaining(c: &Ctl, id: &str, ttl: u64, keys: Option<&str>) -> u64 {
    assert!(c.ok, "lease timetolive: {c:?}");
    let prefix = format!("lease {id} granted with TTL({ttl}s), remaining(");
    let suffix = match keys {
        Some(k) => format!("s), attached keys({k})\n"),
        None => "s)\n".to_string(),
    };
    let n = c
        .stdout
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_suffix(suffix.as_str()))
        .unwrap_or_else(|| panic!("not `{prefix}<n>{suffix}`: {c:?}"));
    n.parse()
        .unwrap_or_else(|_| panic!("remaining {n:?} is not a number: {c:?}"))
}

/// The lease ID (as `lease` commands print it, 16 hex digits) at the end of a lock or election
/// key: `mylock/<id as plain hex>`.
fn lease_of_key(key: &str) -> String {
    let hex = key.rsplit('/').next().unwrap_or("");
    let id = u64::from_str_radix(hex, 16)
        .unwrap_or_else(|_| panic!("key {key:?} does not end in a hex lease ID"));
    format!("{id:016x}")
}

/// The keys under `prefix`, read through `ep`.
fn keys(ep: &str, prefix: &str) -> Vec<String> {
    let g = etcdctl(ep, &["get", "--prefix", "--keys-only", prefix]);
    assert!(g.ok, "{g:?}");
    g.stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `get -w json` of `key` through `ep`, parsed.
fn get_json(ep: &str, key: &str) -> serde_json::Value {
    let g = etcdctl(ep, &["get", key, "-w", "json"]);
    assert!(g.ok, "{g:?}");
    serde_json::from_str(&g.stdout).expect("get -w json prints JSON")
}

/// Reads `p`'s lines until `n` more of them say `lease <id> keepalived with TTL(<ttl>)`. Panics
/// if etcdctl reports the lease expired or revoked, or if they do not come within [`WAIT`]; lines
/// of other shapes are skipped (and shown if it panics).
fn keepalives(p: &CtlProc, id: &str, ttl: u64, n: usize) {
    let want = format!("lease {id} keepalived with TTL({ttl})");
    let deadline = Instant::now() + WAIT;
    let mut seen = 0;
    let mut other = Vec::new();
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p.line(left).unwrap_or_else(|| {
            panic!("{seen} of {n} keep-alives of {id} in time; other lines: {other:?}")
        });
        if line == want {
            seen += 1;
        } else {
            assert!(
                !line.contains("expired or revoked"),
                "lease {id} was lost while kept alive: {line:?} (other lines: {other:?})"
            );
            other.push(line);
        }
    }
}

/// The lines `p` has printed so far, without waiting; none may say the lease `id` was lost.
fn drain_keepalives(p: &CtlProc, id: &str) {
    while let Some(line) = p.line(Duration::ZERO) {
        assert!(
            !line.contains("expired or revoked"),
            "lease {id} was lost while kept alive: {line:?}"
        );
    }
}

/// The first line of `p` that is not a keep-alive of `id` (within [`WAIT`]).
fn after_keepalives(p: &CtlProc, id: &str, ttl: u64) -> String {
    let keepalive = format!("lease {id} keepalived with TTL({ttl})");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p
            .line(left)
            .unwrap_or_else(|| panic!("keep-alive of {id} printed nothing but keep-alives"));
        if line != keepalive {
            return line;
        }
    }
}

/// Asserts that `p` prints nothing for a moment. A process that must stay blocked offers no event
/// to wait for, so this is the one bounded wait without a condition: it only bounds how long a
/// wrong early print could go unseen.
fn assert_silent(p: &CtlProc, what: &str) {
    if let Some(l) = p.line(Duration::from_millis(500)) {
        panic!("{what} printed {l:?} while it should block");
    }
}

/// etcd's lease tutorial against one member of `kind`, asserting etcdctl's exact outputs.
async fn lease_tutorial(kind: Kind) {
    let c = Cluster::start_with(kind, 1, &[]).await;
    let ep = c.endpoints();

    // Grant, attach a key, renew once, inspect.
    let id = granted(&etcdctl(&ep, &["lease", "grant", "60"]), 60);
    let with_lease = format!("--lease={id}");
    assert_eq!(
        etcdctl(&ep, &["put", &with_lease, "foo", "bar"]).stdout,
        "OK\n"
    );
    let once = etcdctl(&ep, &["lease", "keep-alive", "--once", &id]);
    assert!(once.ok, "{kind:?}: {once:?}");
    assert_eq!(once.stdout, format!("lease {id} keepalived with TTL(60)\n"));
    let left = remaining(&etcdctl(&ep, &["lease", "timetolive", &id]), &id, 60, None);
    assert!((50..=60).contains(&left), "{kind:?}: remaining({left}s)");
    remaining(
        &etcdctl(&ep, &["lease", "timetolive", "--keys", &id]),
        &id,
        60,
        Some("[foo]"),
    );

    // A streaming keep-alive renews at once and then every TTL/3, so a 3 s lease lives on well
    // past its TTL; a revoke ends the stream with `expired or revoked.` and exit status 0.
    let short = granted(&etcdctl(&ep, &["lease", "grant", "3"]), 3);
    let mut ka = CtlProc::spawn(&ep, &["lease", "keep-alive", &short], None);
    keepalives(&ka, &short, 3, 1);
    let put = etcdctl(&ep, &["put", &format!("--lease={short}"), "short", "lived"]);
    assert_eq!(put.stdout, "OK\n", "{kind:?}: {put:?}");
    // Four more renewals, each at least 1 s after the one before: more than the TTL has passed.
    keepalives(&ka, &short, 3, 4);
    assert_eq!(
        etcdctl(&ep, &["get", "short"]).stdout,
        "short\nlived\n",
        "{kind:?}: the kept-alive lease outlives its TTL"
    );
    assert_eq!(
        etcdctl(&ep, &["lease", "revoke", &short]).stdout,
        format!("lease {short} revoked\n")
    );
    assert_eq!(
        after_keepalives(&ka, &short, 3),
        format!("lease {short} expired or revoked.")
    );
    assert_eq!(
        ka.wait_exit(WAIT),
        Some(true),
        "{kind:?}: keep-alive exits 0"
    );
    assert_eq!(etcdctl(&ep, &["get", "short"]).stdout, "");

    // Revoking deletes the attached keys.
    assert_eq!(
        etcdctl(&ep, &["lease", "revoke", &id]).stdout,
        format!("lease {id} revoked\n")
    );
    let get = etcdctl(&ep, &["get", "foo"]);
    assert!(get.ok, "{kind:?}: {get:?}");
    assert_eq!(get.stdout, "", "{kind:?}: foo went with its lease");

    // Several keys on one lease; `lease list` counts the live leases and lists them soonest
    // expiry first (etcd sorts by expiry, not by ID).
    let long = granted(&etcdctl(&ep, &["lease", "grant", "500"]), 500);
    for (k, v) in [("zoo1", "val1"), ("zoo2", "val2")] {
        assert_eq!(
            etcdctl(&ep, &["put", k, v, &format!("--lease={long}")]).stdout,
            "OK\n"
        );
    }
    let left = remaining(
        &etcdctl(&ep, &["lease", "timetolive", &long]),
        &long,
        500,
        None,
    );
    assert!((490..=500).contains(&left), "{kind:?}: remaining({left}s)");
    // etcd lists a lease's keys in map order (either order, run to run); oxcd sorts them.
    let with_keys = etcdctl(&ep, &["lease", "timetolive", "--keys", &long]);
    let order = if kind == Kind::Etcd && with_keys.stdout.contains("[zoo2 zoo1]") {
        "[zoo2 zoo1]"
    } else {
        "[zoo1 zoo2]"
    };
    remaining(&with_keys, &long, 500, Some(order));
    let mid = granted(&etcdctl(&ep, &["lease", "grant", "100"]), 100);
    remaining(
        &etcdctl(&ep, &["lease", "timetolive", "--keys", &mid]),
        &mid,
        100,
        Some("[]"),
    );
    assert_eq!(
        etcdctl(&ep, &["lease", "list"]).stdout,
        format!("found 2 leases\n{mid}\n{long}\n"),
        "{kind:?}"
    );

    // A revoked (or never granted) lease: every command says so in its own way.
    fails(
        &etcdctl(&ep, &["lease", "revoke", &id]),
        1,
        "Error: failed to revoke lease (etcdserver: requested lease not found)",
    );
    for args in [
        vec!["lease", "timetolive", id.as_str()],
        vec!["lease", "timetolive", "--keys", id.as_str()],
    ] {
        let t = etcdctl(&ep, &args);
        assert!(t.ok, "{kind:?}: {t:?}");
        assert_eq!(t.stdout, format!("lease {id} already expired\n"));
    }
    assert_eq!(
        etcdctl(&ep, &["lease", "timetolive", "1234abcd"]).stdout,
        "lease 000000001234abcd already expired\n"
    );
    fails(
        &etcdctl(&ep, &["lease", "keep-alive", "--once", &id]),
        2,
        "Error: etcdserver: requested lease not found",
    );
    let stream = etcdctl(&ep, &["lease", "keep-alive", &id]);
    assert!(stream.ok, "{kind:?}: {stream:?}");
    assert_eq!(stream.stdout, format!("lease {id} expired or revoked.\n"));
    fails(
        &etcdctl(&ep, &["put", &with_lease, "foo", "bar"]),
        1,
        "Error: etcdserver: requested lease not found",
    );
    assert_eq!(etcdctl(&ep, &["get", "foo"]).stdout, "");

    // TTL bounds: below the minimum (1.5 election timeouts, rounded up: 2 s with the default
    // 1000 ms) a lease is granted the minimum; above 9,000,000,000 s it is refused.
    granted(&etcdctl(&ep, &["lease", "grant", "1"]), 2);
    granted(&etcdctl(&ep, &["lease", "grant", "0"]), 2);
    fails(
        &etcdctl(&ep, &["lease", "grant", "9000000001"]),
        1,
        "Error: failed to grant lease (etcdserver: too large lease TTL)",
    );
    granted(
        &etcdctl(&ep, &["lease", "grant", "9000000000"]),
        9_000_000_000,
    );
}

/// `etcdctl lease grant / put --lease / keep-alive [--once] / timetolive [--keys] / list / revoke`
/// print exactly what they print against the real etcd, errors and exit codes included: revoking
/// deletes the lease's keys, a streaming keep-alive keeps a short lease alive past its TTL and
/// exits 0 saying `expired or revoked.` once it is revoked, `lease list` lists soonest expiry
/// first, and TTLs are clamped up to the minimum and refused above the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_tutorial_through_etcdctl_matches_etcd() {
    lease_tutorial(Kind::Etcd).await;
    lease_tutorial(Kind::Oxcd).await;
}

/// A 3 s lease with two keys expires on every member of a three-member cluster, never before its
/// TTL: each member's reads lose both keys, a watcher on a follower sees both DELETEs in one
/// response at one revision (in key order, as etcd deletes them), `lease timetolive` answers
/// `already expired` and `lease list` finds no lease, through every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lease_expires_on_every_member_and_watchers_see_deletes() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let fep = c.members[(leader + 1) % 3].endpoint();
    let all = c.endpoints();
    // Watch from the next revision: no event is missed however late the watch registers.
    let next = get_json(&all, "probe")["header"]["revision"]
        .as_i64()
        .expect("header.revision")
        + 1;
    let w = CtlProc::spawn(
        &fep,
        &[
            "watch",
            "--prefix",
            "k",
            &format!("--rev={next}"),
            "-w",
            "json",
        ],
        None,
    );

    let start = Instant::now();
    let id = granted(&etcdctl(&all, &["lease", "grant", "3"]), 3);
    for (k, v) in [("k1", "a"), ("k2", "b")] {
        let put = etcdctl(&all, &["put", &format!("--lease={id}"), k, v]);
        assert_eq!(put.stdout, "OK\n", "{put:?}");
    }

    // A linearizable read through a member is served from that member's own applied state, so
    // an empty answer from each member means each applied the expiry.
    for m in &c.members {
        let ep = m.endpoint();
        wait_until(
            &format!("both keys to expire on {}", m.spec.name),
            WAIT,
            || {
                let g = etcdctl(&ep, &["get", "--prefix", "k"]);
                async move { g.ok && g.stdout.is_empty() }
            },
        )
        .await;
    }
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "the lease expired before its TTL: {:?}",
        start.elapsed()
    );

    // The watcher's responses (one JSON object a line) until both DELETEs have come: each
    // DELETE as (response index, response revision, key, mod_revision). Keys are base64 in
    // etcdctl's JSON: "azE=" is k1, "azI=" is k2.
    let mut deletes: Vec<(usize, i64, String, i64)> = Vec::new();
    let mut puts: Vec<String> = Vec::new();
    let mut responses = 0;
    let deadline = Instant::now() + WAIT;
    while deletes.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = w.line(left).unwrap_or_else(|| {
            panic!("the watcher on a follower saw puts {puts:?} and deletes {deletes:?} only")
        });
        let Ok(resp) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let rev = resp["Header"]["revision"]
            .as_i64()
            .expect("Header.revision");
        for ev in resp["Events"].as_array().into_iter().flatten() {
            let key = ev["kv"]["key"].as_str().unwrap_or("").to_string();
            let mod_rev = ev["kv"]["mod_revision"].as_i64().unwrap_or(0);
            if ev["type"].as_i64() == Some(1) {
                deletes.push((responses, rev, key, mod_rev));
            } else {
                puts.push(key);
            }
        }
        responses += 1;
    }
    assert_eq!(puts, ["azE=", "azI="], "the watcher saw both puts first");
    let (resp, rev, _, _) = deletes[0].clone();
    assert_eq!(
        deletes,
        [
            (resp, rev, "azE=".to_string(), rev),
            (resp, rev, "azI=".to_string(), rev)
        ],
        "both DELETEs in one response, at the response's revision, in key order"
    );

    for m in &c.members {
        let ep = m.endpoint();
        let t = etcdctl(&ep, &["lease", "timetolive", &id]);
        assert!(t.ok, "{t:?}");
        assert_eq!(
            t.stdout,
            format!("lease {id} already expired\n"),
            "through {}",
            m.spec.name
        );
        let list = etcdctl(&ep, &["lease", "list"]);
        assert_eq!(list.stdout, "found 0 leases\n", "through {}", m.spec.name);
    }
}

/// The simple-format lines `etcdctl watch args...` prints through `ep`, from `first`'s start up
/// to and including the line `last`. A member that has had no leader for three election
/// timeouts cancels etcdctl's watch (etcdctl asks for a leader, and etcd does the same), so if
/// `first` is cancelled on the way, a new watch with the same `--rev` replays the same history.
fn history_until(first: CtlProc, ep: &str, args: &[&str], last: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut w = first;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the watch never printed {last:?}: {out:?}");
        match w.line(left) {
            Some(l) if !l.contains("canceled") => {
                let done = l == last;
                out.push(l);
                if done {
                    return out;
                }
            }
            // Cancelled, or exited: start over from the same revision.
            _ => {
                out.clear();
                w = CtlProc::spawn(ep, args, None);
            }
        }
    }
}

/// A lease kept alive through one member, a key on it, and a watcher on another member.
struct KeptAlive {
    /// The lease ID as etcdctl prints it.
    id: String,
    /// `etcdctl lease keep-alive <id>` through the first member (one renewal already seen).
    keepalive: CtlProc,
    /// `etcdctl watch --prefix <key> --rev=<the put's revision>` through the second member.
    watcher: CtlProc,
    /// The watcher's arguments, to start it again from the same revision.
    watch_args: Vec<String>,
}

/// Grants a `ttl`-second lease through `fep`, keeps it alive there, puts `key` under it, and
/// watches `key` through `gep` from the put's revision.
fn kept_alive_key(fep: &str, gep: &str, ttl: u64, key: &str) -> KeptAlive {
    let id = granted(&etcdctl(fep, &["lease", "grant", &ttl.to_string()]), ttl);
    let keepalive = CtlProc::spawn(fep, &["lease", "keep-alive", &id], None);
    keepalives(&keepalive, &id, ttl, 1);
    let put = etcdctl(fep, &["put", &format!("--lease={id}"), key, "v"]);
    assert_eq!(put.stdout, "OK\n", "{put:?}");
    let put_rev = get_json(fep, key)["kvs"][0]["mod_revision"]
        .as_i64()
        .expect("kvs[0].mod_revision");
    let watch_args = vec![
        "watch".to_string(),
        "--prefix".to_string(),
        key.to_string(),
        format!("--rev={put_rev}"),
    ];
    let args: Vec<&str> = watch_args.iter().map(String::as_str).collect();
    let watcher = CtlProc::spawn(gep, &args, None);
    KeptAlive {
        id,
        keepalive,
        watcher,
        watch_args,
    }
}

/// A 3 s lease kept alive only by `etcdctl lease keep-alive` through a follower outlives its TTL
/// many times over, also across a SIGKILL of the leader and the election that follows; once the
/// keep-alive is killed the lease expires and its key goes from every surviving member, and a
/// watcher started before the kill (on the other follower, from the put's revision) sees the
/// key's PUT and then exactly one DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_through_follower_survives_leader_kill_then_expires_once() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let (f, g) = ((leader + 1) % 3, (leader + 2) % 3);
    let fep = c.members[f].endpoint();
    let gep = c.members[g].endpoint();

    let KeptAlive {
        id,
        keepalive: mut ka,
        watcher,
        watch_args,
    } = kept_alive_key(&fep, &gep, 3, "ka");
    let watch_args: Vec<&str> = watch_args.iter().map(String::as_str).collect();

    // Seven renewals, each at least TTL/3 = 1 s after the one before: over twice the TTL.
    keepalives(&ka, &id, 3, 7);
    for ep in [&fep, &gep] {
        let got = etcdctl(ep, &["get", "ka"]);
        assert_eq!(got.stdout, "ka\nv\n", "kept alive, through {ep}: {got:?}");
    }

    c.members[leader].kill();
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    // Renewals printed before now may predate the election; count only those after it. Seven
    // more span over 6 s: more than the TTL plus the grace a new leader gives every lease.
    drain_keepalives(&ka, &id);
    keepalives(&ka, &id, 3, 7);
    for ep in [&fep, &gep] {
        let got = etcdctl(ep, &["get", "ka"]);
        assert_eq!(
            got.stdout, "ka\nv\n",
            "kept alive across the leader kill, through {ep}: {got:?}"
        );
    }
    let t = etcdctl(&gep, &["lease", "timetolive", &id]);
    remaining(&t, &id, 3, None);

    // Without its keep-alive the lease expires, on every surviving member.
    ka.kill();
    for ep in [&fep, &gep] {
        wait_until(&format!("ka to expire on {ep}"), WAIT, || {
            let got = etcdctl(ep, &["get", "ka"]);
            async move { got.ok && got.stdout.is_empty() }
        })
        .await;
    }
    let t = etcdctl(&gep, &["lease", "timetolive", &id]);
    assert_eq!(t.stdout, format!("lease {id} already expired\n"), "{t:?}");

    // A sentinel put marks the end of the history to read: PUT, one DELETE, the sentinel.
    let end = etcdctl(&fep, &["put", "ka.end", "end"]);
    assert_eq!(end.stdout, "OK\n", "{end:?}");
    assert_eq!(
        history_until(watcher, &gep, &watch_args, "end"),
        ["PUT", "ka", "v", "DELETE", "ka", "", "PUT", "ka.end", "end"]
    );
}

/// `etcdctl lock --ttl=2` against one member at `ep`: one holder at a time; a SIGKILLed holder's
/// lock passes to the waiting contender once its session lease expires; SIGINT unlocks.
async fn lock_one_holder(kind: Kind, ep: &str) {
    let mut a = CtlProc::spawn(ep, &["lock", "--ttl=2", "mylock"], None);
    // The holder prints its key (`mylock/<lease ID in hex>`) and the key's empty value.
    let first = a.lines(2);
    assert!(
        first[0].starts_with("mylock/") && first[1].is_empty(),
        "{kind:?}: {first:?}"
    );
    let mut b = CtlProc::spawn(ep, &["lock", "--ttl=2", "mylock"], None);
    wait_until("the second contender's key", WAIT, || {
        let n = keys(ep, "mylock/").len();
        async move { n == 2 }
    })
    .await;
    assert_silent(&b, "a second `etcdctl lock` while the lock is held");

    a.kill();
    let second = b.lines(2);
    assert!(
        second[0].starts_with("mylock/") && second[0] != first[0] && second[1].is_empty(),
        "{kind:?}: {second:?} after {first:?}"
    );
    assert_eq!(
        keys(ep, "mylock/"),
        [second[0].clone()],
        "{kind:?}: the killed holder's key went with its lease"
    );
    let lease = lease_of_key(&second[0]);
    let t = etcdctl(ep, &["lease", "timetolive", &lease]);
    remaining(&t, &lease, 2, None);

    b.signal("INT");
    assert_eq!(b.wait_exit(WAIT), Some(true), "{kind:?}: lock exits 0");
    assert!(keys(ep, "mylock/").is_empty(), "{kind:?}: SIGINT unlocks");
}

/// `etcdctl elect` against one member at `ep`: one leader at a time, observed by
/// `etcdctl elect -l`; the waiting candidate wins once the killed leader's session lease is
/// revoked; SIGINT resigns.
async fn elect_one_leader(kind: Kind, ep: &str) {
    let observer = CtlProc::spawn(ep, &["elect", "-l", "myelection"], None);
    let mut p1 = CtlProc::spawn(ep, &["elect", "myelection", "p1"], None);
    // The leader prints its key (`myelection/<lease ID in hex>`) and its proposal.
    let first = p1.lines(2);
    assert!(
        first[0].starts_with("myelection/") && first[1] == "p1",
        "{kind:?}: {first:?}"
    );
    assert_eq!(observer.lines(2), first, "{kind:?}: the observer sees p1");
    let mut p2 = CtlProc::spawn(ep, &["elect", "myelection", "p2"], None);
    wait_until("the second candidate's key", WAIT, || {
        let n = keys(ep, "myelection/").len();
        async move { n == 2 }
    })
    .await;
    assert_silent(&p2, "a second `etcdctl elect` while there is a leader");

    // etcdctl 3.5's elect has no --ttl (its session lease lives 60 s): after the SIGKILL, revoke
    // the killed leader's lease by hand instead of waiting for it to expire.
    p1.kill();
    let lease = lease_of_key(&first[0]);
    assert_eq!(
        etcdctl(ep, &["lease", "revoke", &lease]).stdout,
        format!("lease {lease} revoked\n")
    );
    let second = p2.lines(2);
    assert!(
        second[0].starts_with("myelection/") && second[0] != first[0] && second[1] == "p2",
        "{kind:?}: {second:?} after {first:?}"
    );
    assert_eq!(observer.lines(2), second, "{kind:?}: the observer sees p2");

    p2.signal("INT");
    assert_eq!(p2.wait_exit(WAIT), Some(true), "{kind:?}: elect exits 0");
    assert!(
        keys(ep, "myelection/").is_empty(),
        "{kind:?}: SIGINT resigns"
    );
}

/// `etcdctl lock` and `etcdctl elect`, against the real etcd and oxcd alike: one holder (leader)
/// at a time while a second contender blocks silently; when the holder's etcdctl is SIGKILLed,
/// the lock passes on as its session lease expires (the election once that lease is revoked);
/// `elect -l` prints each leader's key and proposal; SIGINT unlocks / resigns with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_one_holder_at_a_time() {
    for kind in [Kind::Etcd, Kind::Oxcd] {
        let c = Cluster::start_with(kind, 1, &[]).await;
        let ep = c.endpoints();
        lock_one_holder(kind, &ep).await;
        elect_one_leader(kind, &ep).await;
    }
}

fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// The key's lease, or `None` when the key does not exist.
async fn lease_of(cl: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let r = cl.get(key, None).await.expect("get");
    r.kvs().first().map(|kv| kv.lease())
}

/// The Lease API through the `etcd-client` crate, against etcd and oxcd alike: client-chosen
/// IDs and the duplicate-ID error, the minimum and maximum TTL, attach/detach through put
/// (`ignore_lease` keeps the lease, a put without one detaches it), time-to-live with keys and
/// for an unknown lease (TTL -1), keep-alive of an unknown lease (TTL 0, no error), the lease
/// list, and a revoke that deletes exactly the attached keys in one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_api_through_etcd_client_matches_etcd() {
    use etcd_client::{LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
    for kind in [Kind::Etcd, Kind::Oxcd] {
        let c = Cluster::start_with(kind, 1, &[]).await;
        let mut cl = c.client().await;
        let id = 0x1234_i64;
        let g = cl
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .expect("grant with an ID");
        assert_eq!((g.id(), g.ttl()), (id, 30), "{kind:?}");
        let dup = cl
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .expect_err("a second grant of the same ID");
        assert_eq!(
            status(dup),
            (
                tonic::Code::FailedPrecondition,
                "etcdserver: lease already exists".to_string()
            ),
            "{kind:?}"
        );
        let short = cl.lease_grant(1, None).await.expect("grant TTL 1");
        assert!(short.id() > 0, "{kind:?}: server-chosen IDs are positive");
        assert_eq!(short.ttl(), 2, "{kind:?}: TTL raised to the minimum");
        let big = cl
            .lease_grant(9_000_000_001, None)
            .await
            .expect_err("too large a TTL");
        assert_eq!(
            status(big),
            (
                tonic::Code::OutOfRange,
                "etcdserver: too large lease TTL".to_string()
            ),
            "{kind:?}"
        );

        let with = |l: i64| Some(PutOptions::new().with_lease(l));
        cl.put("a", "1", with(id)).await.expect("put a");
        cl.put("b", "1", with(id)).await.expect("put b");
        cl.put("c", "1", None).await.expect("put c");
        cl.put("a", "2", Some(PutOptions::new().with_ignore_lease()))
            .await
            .expect("put a, ignore_lease");
        cl.put("b", "2", None).await.expect("put b without a lease");
        assert_eq!(lease_of(&mut cl, "a").await, Some(id), "{kind:?}");
        assert_eq!(lease_of(&mut cl, "b").await, Some(0), "{kind:?}");

        let t = cl
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(
            (t.id(), t.granted_ttl(), t.keys()),
            (id, 30, &[b"a".to_vec()][..]),
            "{kind:?}"
        );
        assert!(
            (28..=30).contains(&t.ttl()),
            "{kind:?}: remaining {}",
            t.ttl()
        );
        let unknown = cl.lease_time_to_live(0x999, None).await.expect("unknown");
        assert_eq!(unknown.ttl(), -1, "{kind:?}: an unknown lease has TTL -1");

        // etcd-client refuses a keep-alive whose first answer is TTL 0, so ask through raw
        // gRPC: an unknown lease is answered with TTL 0 on the same stream, not an error.
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.endpoints()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut raw = oxcd::proto::etcdserverpb::lease_client::LeaseClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for lease in [0x999, id] {
            tx.send(oxcd::proto::etcdserverpb::LeaseKeepAliveRequest { id: lease })
                .await
                .expect("queue");
        }
        let mut answers = raw
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("keep-alive stream")
            .into_inner();
        for (lease, ttl) in [(0x999, 0), (id, 30)] {
            let r = answers.message().await.expect("receive").expect("answer");
            assert_eq!((r.id, r.ttl), (lease, ttl), "{kind:?}");
        }
        let (mut keeper, mut stream) = cl.lease_keep_alive(id).await.expect("keep-alive");
        keeper.keep_alive().await.expect("send");
        let r = stream
            .message()
            .await
            .expect("receive")
            .expect("a response");
        assert_eq!((r.id(), r.ttl()), (id, 30), "{kind:?}");

        let mut listed: Vec<i64> = cl
            .leases()
            .await
            .expect("leases")
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        listed.sort_unstable();
        let mut want = vec![id, short.id()];
        want.sort_unstable();
        assert_eq!(listed, want, "{kind:?}");

        let before = cl
            .get("c", None)
            .await
            .expect("get")
            .header()
            .map(|h| h.revision());
        let revoked = cl.lease_revoke(id).await.expect("revoke");
        assert_eq!(
            revoked.header().map(|h| h.revision()),
            before.map(|r| r + 1),
            "{kind:?}: the revoke deleted its one key in one revision"
        );
        assert_eq!(lease_of(&mut cl, "a").await, None, "{kind:?}");
        assert_eq!(lease_of(&mut cl, "b").await, Some(0), "{kind:?}");
        let again = cl.lease_revoke(id).await.expect_err("revoke twice");
        assert_eq!(
            status(again),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found".to_string()
            ),
            "{kind:?}"
        );
    }
}

/// With `--experimental-enable-lease-checkpoint`, the leader checkpoints remaining TTLs through
/// the log, so after a leader SIGKILL the new leader counts down from the checkpoint instead of
/// granting the full TTL again; without it, the new leader restarts the full TTL (etcd's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointed_remaining_ttl_survives_a_leader_kill() {
    for checkpoint in [true, false] {
        let flags: &[&str] = if checkpoint {
            &[
                "--experimental-enable-lease-checkpoint",
                "--experimental-lease-checkpoint-interval=1s",
            ]
        } else {
            &[]
        };
        let mut c = Cluster::start_with(Kind::Oxcd, 3, flags).await;
        let leader = c.wait_leader().await;
        let other = c.members[(leader + 1) % 3].endpoint();
        let id = granted(&etcdctl(&other, &["lease", "grant", "30"]), 30);
        // Four seconds off the lease: checkpoints (every second) have recorded at most 28 s.
        wait_until("the lease to run down to 26 s", WAIT, || {
            let t = etcdctl(&other, &["lease", "timetolive", &id]);
            let left = t.ok.then(|| remaining(&t, &id, 30, None));
            async move { left.is_some_and(|l| l <= 26) }
        })
        .await;
        c.members[leader].kill();
        let new_leader = c.wait_leader().await;
        let t = etcdctl(
            &c.members[new_leader].endpoint(),
            &["lease", "timetolive", &id],
        );
        let left = remaining(&t, &id, 30, None);
        if checkpoint {
            // At most a checkpoint (<= 28 s) plus the new leader's grace of one election timeout.
            assert!(left <= 29, "remaining {left} s after the leader change");
        } else {
            assert!(
                left >= 30,
                "without checkpoints the full TTL restarts: {left} s"
            );
        }
    }
}

/// A leader that is cut off (SIGSTOP) while one of its leases is kept alive through a follower
/// never revokes it: the others elect a new leader that takes over the keep-alives, and when the
/// old leader resumes with its lease deadlines long past, its stale view changes nothing. The
/// key stays on every member and a watcher sees no DELETE; once the keep-alive stops, the lease
/// expires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_revokes_a_lease_kept_alive_elsewhere() {
    let c = Cluster::start(3).await;
    let old = c.wait_leader().await;
    let (f, g) = ((old + 1) % 3, (old + 2) % 3);
    let (fep, gep) = (c.members[f].endpoint(), c.members[g].endpoint());

    let KeptAlive {
        id,
        keepalive: mut ka,
        watcher,
        watch_args,
    } = kept_alive_key(&fep, &gep, 2, "dl");
    let watch_args: Vec<&str> = watch_args.iter().map(String::as_str).collect();

    c.members[old].signal("STOP");
    // Renewals keep coming through the follower once the other two have a leader; six of them
    // (each about a second apart) span well over the 2 s TTL the stopped leader last saw.
    drain_keepalives(&ka, &id);
    keepalives(&ka, &id, 2, 6);
    c.members[old].signal("CONT");

    // The old leader rejoins: a linearizable read through it needs the new leader's read
    // index, so once it answers it has caught up, and it still sees the key.
    let oep = c.members[old].endpoint();
    wait_until("the old leader to serve a linearizable read", WAIT, || {
        let got = etcdctl(&oep, &["get", "dl"]);
        async move { got.ok && got.stdout == "dl\nv\n" }
    })
    .await;
    // Give a stale revoke every chance to commit: more renewals after the resume.
    keepalives(&ka, &id, 2, 4);
    for m in &c.members {
        let got = etcdctl(&m.endpoint(), &["get", "dl"]);
        assert_eq!(got.stdout, "dl\nv\n", "through {}: {got:?}", m.spec.name);
    }

    ka.kill();
    for m in &c.members {
        let ep = m.endpoint();
        wait_until(&format!("dl to expire on {}", m.spec.name), WAIT, || {
            let got = etcdctl(&ep, &["get", "dl"]);
            async move { got.ok && got.stdout.is_empty() }
        })
        .await;
    }
    let end = etcdctl(&fep, &["put", "dl.end", "end"]);
    assert_eq!(end.stdout, "OK\n", "{end:?}");
    assert_eq!(
        history_until(watcher, &gep, &watch_args, "end"),
        ["PUT", "dl", "v", "DELETE", "dl", "", "PUT", "dl.end", "end"]
    );
}

/// A leader cut off from both followers (SIGSTOP) cannot keep a lease alive: a keep-alive needs
/// the leader's leadership confirmed by a quorum (within half an election timeout), so it fails
/// instead of promising a TTL that the rest of the cluster need not honour. Once the followers
/// are back, keep-alives succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_does_not_renew_leases() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let lep = c.members[leader].endpoint();
    let id = granted(&etcdctl(&lep, &["lease", "grant", "30"]), 30);
    let once = ["lease", "keep-alive", "--once", id.as_str()];
    let ok = etcdctl(&lep, &once);
    assert_eq!(
        ok.stdout,
        format!("lease {id} keepalived with TTL(30)\n"),
        "{ok:?}"
    );

    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        c.members[i].signal("STOP");
    }
    // A confirmation younger than half an election timeout may still serve one renewal (no
    // other leader can exist that soon); after that, every keep-alive must fail.
    wait_until(
        "keep-alives through the cut-off leader to fail",
        WAIT,
        || {
            let cut = etcdctl(
                &lep,
                &[
                    "--command-timeout=2s",
                    "lease",
                    "keep-alive",
                    "--once",
                    id.as_str(),
                ],
            );
            async move { !cut.ok && !cut.stdout.contains("keepalived") }
        },
    )
    .await;
    let cut = etcdctl(
        &lep,
        &[
            "--command-timeout=2s",
            "lease",
            "keep-alive",
            "--once",
            id.as_str(),
        ],
    );
    for &i in &followers {
        c.members[i].signal("CONT");
    }
    assert!(
        !cut.ok && !cut.stdout.contains("keepalived"),
        "a leader without a quorum renewed a lease: {cut:?}"
    );
    wait_until("a keep-alive once the followers are back", WAIT, || {
        let r = etcdctl(&c.endpoints(), &once);
        let want = format!("lease {id} keepalived with TTL(30)\n");
        async move { r.ok && r.stdout == want }
    })
    .await;
}
