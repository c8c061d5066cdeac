//! Docker end-to-end of the membership controller: containers of the real image in an emulated
//! StatefulSet ([`crate::pods`]) whose Kubernetes API ([`crate::kubeapi`]) the test serves and
//! backs with the containers. Scale 3 -> 5 -> 3, an OnDelete upgrade of every member to a second
//! build (with the new pod killed mid-upgrade), and a scale-up onto a removed ordinal's old
//! volume, all under a client workload whose history is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::chaos::workload::Workload;
use crate::harness::{try_connect, wait_until};
use crate::kubeapi::{FakeKube, FakePod, KubeState, Notifier};
use crate::pods::{docker, ensure_next_image, PodSet, IMAGE, NEXT_IMAGE};

const OLD_REV: &str = "oxcd-rev-a";
const NEW_REV: &str = "oxcd-rev-b";
const WAIT: Duration = Duration::from_secs(180);

fn image_of(rev: &str) -> &'static str {
    if rev == NEW_REV {
        NEXT_IMAGE
    } else {
        IMAGE
    }
}

/// `GET path` on 127.0.0.1:port: the status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The StatefulSet controller and kubelet, emulated: creates missing pods from the update
/// revision's image, stops (SIGTERM, grace period) pods that are deleted or no longer wanted,
/// restarts containers that died, and reports readiness from `/readyz`.
struct Emulator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn emulate(set: Arc<Mutex<PodSet>>, api: Notifier) -> Emulator {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        let busy: Arc<Mutex<BTreeSet<u32>>> = Arc::new(Mutex::new(BTreeSet::new()));
        let mut workers = Vec::new();
        while !stopping.load(Ordering::Relaxed) {
            let (replicas, rev, pods) = {
                let s = api.state.lock();
                (s.replicas, s.update_revision.clone(), s.pods.clone())
            };
            let mut changed = false;
            // Create what is missing (podManagementPolicy: Parallel).
            for o in 0..replicas {
                if pods.contains_key(&o) || busy.lock().contains(&o) {
                    continue;
                }
                {
                    let mut s = set.lock();
                    s.ensure_pod(o as usize);
                    s.remove_container(o as usize);
                    s.start_image(o as usize, image_of(&rev));
                }
                api.state.lock().pods.insert(
                    o,
                    FakePod {
                        ready: false,
                        revision: rev.clone(),
                        terminating: false,
                    },
                );
                changed = true;
            }
            // Delete what is deleted or not wanted: SIGTERM, then the grace period.
            for (o, p) in &pods {
                if (p.terminating || *o >= replicas) && busy.lock().insert(*o) {
                    if let Some(fp) = api.state.lock().pods.get_mut(o) {
                        fp.terminating = true;
                    }
                    changed = true;
                    let container = set.lock().pods[*o as usize].container.clone();
                    let (api, busy, o) = (api.clone(), busy.clone(), *o);
                    workers.push(std::thread::spawn(move || {
                        docker(&["stop", "-t", "60", &container], false);
                        // Its logs, shown if the test fails (the container goes now).
                        let out = std::process::Command::new("docker")
                            .args(["logs", "--tail", "40", &container])
                            .output();
                        if let Ok(out) = out {
                            eprintln!(
                                "--- {container} stopped; its last lines ---\n{}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                        docker(&["rm", "-f", &container], false);
                        api.state.lock().pods.remove(&o);
                        busy.lock().remove(&o);
                        api.changed();
                    }));
                }
            }
            // Restart containers that died (restartPolicy: Always), and readiness.
            let (_, running) = docker(&["ps", "--format", "{{.Names}}"], false);
            let running: BTreeSet<&str> = running.lines().collect();
            for (o, p) in &pods {
                if p.terminating || busy.lock().contains(o) {
                    continue;
                }
                let (container, port) = {
                    let s = set.lock();
                    let pod = &s.pods[*o as usize];
                    (pod.container.clone(), pod.metrics_port)
                };
                let up = running.contains(container.as_str());
                if !up {
                    docker(&["start", &container], false);
                }
                let ready = up && http_get(port, "/readyz").is_some_and(|(c, _)| c == 200);
                if let Some(fp) = api.state.lock().pods.get_mut(o) {
                    if fp.ready != ready {
                        fp.ready = ready;
                        changed = true;
                    }
                }
            }
            if changed {
                api.changed();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for w in workers {
            let _ = w.join();
        }
    });
    Emulator {
        stop,
        thread: Some(thread),
    }
}

/// What the cluster looks like from outside: voters and learners by name, and which answer.
#[derive(Debug, Default, Clone)]
struct Seen {
    voters: Vec<String>,
    learners: Vec<String>,
    healthy_voters: usize,
    versions: BTreeMap<String, String>,
}

async fn look(set: &Arc<Mutex<PodSet>>) -> Option<Seen> {
    let pods: Vec<(String, String, u16)> = set
        .lock()
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.endpoint(), p.metrics_port))
        .collect();
    // The member list as a voter sees it (a member still joining knows no members yet).
    let mut members = None;
    for (name, ep, _) in &pods {
        if let Ok(mut c) = try_connect(std::slice::from_ref(ep)).await {
            if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(2), c.member_list()).await {
                if l.members()
                    .iter()
                    .any(|m| m.name() == name && !m.is_learner())
                {
                    members = Some(l.members().to_vec());
                    break;
                }
            }
        }
    }
    let members = members?;
    let mut seen = Seen::default();
    for m in &members {
        if m.is_learner() {
            seen.learners.push(m.name().to_string());
            continue;
        }
        seen.voters.push(m.name().to_string());
        let Some((_, ep, port)) = pods.iter().find(|(n, _, _)| n == m.name()) else {
            continue;
        };
        let up = match try_connect(std::slice::from_ref(ep)).await {
            Ok(mut c) => tokio::time::timeout(Duration::from_secs(2), c.status())
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        if up {
            seen.healthy_voters += 1;
        }
        let port = *port;
        let version = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .ok()
            .flatten()
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("oxcd_build_info{"))
                    .and_then(|l| l.split('"').nth(1).map(str::to_string))
            });
        if let Some(v) = version {
            seen.versions.insert(m.name().to_string(), v);
        }
    }
    seen.voters.sort();
    seen.learners.sort();
    Some(seen)
}

/// Samples the cluster every 200 ms and keeps the fewest healthy voters seen relative to quorum.
struct Monitor {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<Option<(usize, usize, u64)>>>, // (healthy, voters, at ms)
    task: tokio::task::JoinHandle<()>,
}

fn monitor(set: Arc<Mutex<PodSet>>, t0: Instant) -> Monitor {
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new(None));
    let (s, w) = (stop.clone(), worst.clone());
    let task = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            if let Some(seen) = look(&set).await {
                let voters = seen.voters.len();
                let margin = seen.healthy_voters as i64 - (voters / 2 + 1) as i64;
                let mut g = w.lock();
                let worse = g.is_none_or(|(h, v, _)| margin < h as i64 - (v / 2 + 1) as i64);
                if worse {
                    *g = Some((seen.healthy_voters, voters, t0.elapsed().as_millis() as u64));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Monitor { stop, worst, task }
}

async fn wait_for(
    set: &Arc<Mutex<PodSet>>,
    what: &str,
    cond: impl Fn(&Seen) -> bool + Clone,
) -> Seen {
    let last = Arc::new(Mutex::new(None));
    let l = last.clone();
    let started = Instant::now();
    let set2 = set.clone();
    let r = tokio::time::timeout(WAIT, async move {
        loop {
            if let Some(s) = look(&set2).await {
                *l.lock() = Some(s.clone());
                if cond(&s) {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match r {
        Ok(s) => {
            eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
            s
        }
        Err(_) => {
            let s = set.lock();
            for i in 0..s.pods.len() {
                let logs = s.logs(i);
                let tail: Vec<&str> = logs.lines().rev().take(60).collect();
                eprintln!("--- last lines of {} ---", s.pods[i].name);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            panic!("timed out waiting for {what}; last seen {:?}", last.lock())
        }
    }
}

fn names(n: u32) -> Vec<String> {
    (0..n).map(|o| format!("oxcd-{o}")).collect()
}

fn events(api: &FakeKube) -> Vec<(String, String)> {
    api.state
        .lock()
        .events
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_scales_3_5_3_and_upgrades_every_member_under_a_checked_workload() {
    ensure_next_image();
    let mut set = PodSet::new(3);
    let host = set.host_address();
    let mut st: KubeState = crate::kubeapi::state("oxcd", 3, OLD_REV);
    st.on_delete = true;
    st.namespace = "default".to_string();
    st.pods.clear();
    let api = FakeKube::start(st, Some(SocketAddr::from(([0, 0, 0, 0], 0)))).await;
    let port = api.url.rsplit(':').next().unwrap_or_default().to_string();
    let kube_url = format!("http://{host}:{port}");
    set.add_env(&[
        ("OXCD_KUBE_API", kube_url.as_str()),
        ("OXCD_CONTROLLER_INTERVAL", "1"),
    ]);
    let set = Arc::new(Mutex::new(set));
    let _emulator = emulate(set.clone(), api.notifier());
    let t0 = Instant::now();

    // Bootstrap 3.
    wait_for(&set, "bootstrap of 3 voters", |s| {
        s.voters == names(3) && s.learners.is_empty() && s.healthy_voters == 3
    })
    .await;
    let endpoints: Vec<String> = set.lock().pods.iter().map(|p| p.endpoint()).collect();
    let workload = Workload::start(&endpoints, 5);
    let mon = monitor(set.clone(), t0);
    wait_until("the workload to run", Duration::from_secs(60), || {
        let n = workload.ops_so_far();
        async move { n > 50 }
    })
    .await;

    // Scale 3 -> 5: the new pods join as learners and the controller promotes them.
    let phase = |w: &Workload| w.now();
    let s1 = phase(&workload);
    api.state.lock().replicas = 5;
    api.changed();
    wait_for(&set, "scale 3 -> 5", |s| {
        s.voters == names(5) && s.learners.is_empty() && s.healthy_voters == 5
    })
    .await;
    let e1 = phase(&workload);

    // Scale 5 -> 3: pods 4 and 3 leave on SIGTERM (or are removed by the controller).
    let down = Instant::now();
    api.state.lock().replicas = 3;
    api.changed();
    wait_for(&set, "scale 5 -> 3", |s| {
        s.voters == names(3) && s.learners.is_empty() && s.healthy_voters == 3
    })
    .await;
    wait_until("pods 3 and 4 to be gone", WAIT, || {
        let n = api.state.lock().pods.len();
        async move { n == 3 }
    })
    .await;
    eprintln!(
        "scale 5 -> 3 until both pods are gone: {:.1} s",
        down.elapsed().as_secs_f64()
    );
    let e2 = phase(&workload);

    // Upgrade to the second build; the first upgraded pod is killed while it rejoins.
    let before = api.state.lock().deleted.len();
    {
        let mut s = api.state.lock();
        s.update_revision = NEW_REV.to_string();
    }
    api.changed();
    wait_until("the first upgraded pod to be recreated", WAIT, || {
        let s = api.state.lock();
        let first = s.deleted.get(before).cloned();
        let back = first.as_ref().and_then(|n| {
            let o: u32 = n.rsplit('-').next()?.parse().ok()?;
            s.pods
                .get(&o)
                .filter(|p| p.revision == NEW_REV && !p.terminating)
                .map(|_| o)
        });
        async move { back.is_some() }
    })
    .await;
    let first = api.state.lock().deleted[before].clone();
    let first_ordinal: usize = first
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    eprintln!("killing {first} while it rejoins");
    set.lock().kill(first_ordinal, "KILL");
    let upgraded = wait_for(&set, "upgrade of 3 members", |s| {
        s.voters == names(3)
            && s.learners.is_empty()
            && s.healthy_voters == 3
            && s.versions.len() == 3
            && s.versions.values().all(|v| v.ends_with("+next"))
    })
    .await;
    wait_until("every pod at the new revision", WAIT, || {
        let ok = {
            let s = api.state.lock();
            s.pods.len() == 3 && s.pods.values().all(|p| p.revision == NEW_REV && p.ready)
        };
        async move { ok }
    })
    .await;
    let e3 = phase(&workload);
    eprintln!("versions after the upgrade: {:?}", upgraded.versions);

    // Scale 3 -> 4 onto ordinal 3's old volume: the stale member does not come back; a new one
    // joins and is promoted.
    api.state.lock().replicas = 4;
    api.changed();
    wait_for(&set, "scale 3 -> 4 on an old volume", |s| {
        s.voters == names(4) && s.learners.is_empty() && s.healthy_voters == 4
    })
    .await;
    let logs3 = set.lock().logs(3);
    assert!(
        logs3.contains("this member was removed from the cluster; its data was moved aside"),
        "ordinal 3 should have set its stale data aside:\n{logs3}"
    );

    // The end: stop the workload and check the history.
    let e4 = phase(&workload);
    mon.stop.store(true, Ordering::Relaxed);
    let _ = mon.task.await;
    let history = workload.finish().await;
    let end_rev = history.final_revision;
    let report = crate::chaos::check(&history);
    eprintln!(
        "history: {} operations answered, {} writes of unknown outcome, {} watch events",
        report.answered, report.unknown, report.watch_events
    );
    eprintln!(
        "longest write gap: scale up {} ms, scale down {} ms, upgrade {} ms, rescale {} ms",
        history.longest_write_gap_ms(s1, e1),
        history.longest_write_gap_ms(e1, e2),
        history.longest_write_gap_ms(e2, e3),
        history.longest_write_gap_ms(e3, e4)
    );
    assert!(
        report.violations.is_empty(),
        "{} violations:\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
    assert!(
        report.answered > 200,
        "too few operations: {}",
        report.answered
    );

    // Never fewer healthy voters than a quorum.
    let worst = *mon.worst.lock();
    eprintln!("fewest healthy voters seen (healthy, voters, at ms): {worst:?}");
    if let Some((healthy, voters, at)) = worst {
        assert!(
            healthy > voters / 2,
            "{healthy} healthy voters of {voters} at {at} ms"
        );
    }

    // HashKV equal on every member.
    let mut hashes = BTreeSet::new();
    let rev = end_rev.max(1);
    let serving: Vec<String> = set.lock().pods[..4].iter().map(|p| p.endpoint()).collect();
    for ep in serving {
        let mut c = try_connect(std::slice::from_ref(&ep))
            .await
            .expect("client");
        let h = c.hash_kv(rev).await.expect("hash_kv");
        hashes.insert(h.hash());
    }
    assert_eq!(
        hashes.len(),
        1,
        "HashKV differs between members: {hashes:?}"
    );

    // The controller's story, in Events: the upgraded pods one at a time, each promoted before
    // the next step, leadership moved before the last (old) leader went.
    let evs = events(&api);
    let story: Vec<&str> = evs
        .iter()
        .filter(|(r, _)| {
            matches!(
                r.as_str(),
                "MemberUpgrading"
                    | "MemberPromoted"
                    | "LeaderMoved"
                    | "MemberRemoved"
                    | "MemberLeft"
            )
        })
        .map(|(r, _)| r.as_str())
        .collect();
    eprintln!("events: {evs:#?}");
    let upgrades: Vec<usize> = story
        .iter()
        .enumerate()
        .filter(|(_, r)| **r == "MemberUpgrading")
        .map(|(i, _)| i)
        .collect();
    assert!(upgrades.len() >= 3, "{story:?}");
    for w in upgrades.windows(2) {
        assert!(
            story[w[0]..w[1]].contains(&"MemberPromoted"),
            "an upgrade step started before the previous member was promoted: {story:?}"
        );
    }
}
