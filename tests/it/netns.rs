//! Members in network namespaces of their own, so a test can cut the network between them:
//! one namespace per member, each with a veth into a bridge in the test's namespace, addresses
//! `10.A.B.1..n` (the test reaches every member through the bridge at `10.A.B.254`).
//!
//! A cut is made with iptables inside a member's namespace, so it only ever touches that member's
//! traffic with its peers; the test's own connections (from the bridge address) are never cut.
//! Everything is removed on drop: the namespaces (and their veths), the bridge and the one
//! FORWARD rule that lets bridged traffic through whatever policy the host's firewall has.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// A set of member namespaces on one bridge.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    prefix: String,
    namespaces: Vec<String>,
}

impl Net {
    /// Makes `n` namespaces on a bridge of their own.
    pub fn new(n: usize) -> Net {
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", pid % 100_000, k);
        // A /24 of 10.0.0.0/8 from the process ID and a counter: tests run in separate processes.
        let a = 100 + (pid / 250 + k * 7) % 150;
        let b = pid % 250;
        let prefix = format!("10.{a}.{b}");
        let net = Net {
            bridge: format!("oxbr{tag}"),
            prefix,
            namespaces: (0..n).map(|i| format!("oxns{tag}-{i}")).collect(),
        };
        must(&["ip", "link", "add", &net.bridge, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", net.prefix),
            "dev",
            &net.bridge,
        ]);
        must(&["ip", "link", "set", &net.bridge, "up"]);
        must(&[
            "iptables",
            "-I",
            "FORWARD",
            "-i",
            &net.bridge,
            "-o",
            &net.bridge,
            "-j",
            "ACCEPT",
        ]);
        for (i, ns) in net.namespaces.iter().enumerate() {
            let host_if = format!("oxv{tag}-{i}");
            must(&["ip", "netns", "add", ns]);
            must(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            must(&["ip", "link", "set", &host_if, "master", &net.bridge]);
            must(&["ip", "link", "set", &host_if, "up"]);
            must(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"]);
        }
        net
    }

    /// How many namespaces there are.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Member `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 1)
    }

    /// Member `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    fn ipt(&self, i: usize, rule: &[&str]) {
        let mut args = vec!["ip", "netns", "exec", self.ns(i), "iptables"];
        args.extend_from_slice(rule);
        must(&args);
    }

    /// Drops every packet member `from` sends to member `to` (a one-way cut).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        let dst = self.addr(to);
        self.ipt(from, &["-A", "OUTPUT", "-d", &dst, "-j", "DROP"]);
    }

    /// Cuts member `i` off from every other member, both ways (the test still reaches it).
    pub fn isolate(&self, i: usize) {
        for j in (0..self.len()).filter(|j| *j != i) {
            let other = self.addr(j);
            self.ipt(i, &["-A", "OUTPUT", "-d", &other, "-j", "DROP"]);
            self.ipt(i, &["-A", "INPUT", "-s", &other, "-j", "DROP"]);
        }
    }

    /// Drops a random `percent` of the packets member `i` exchanges with its peers, both ways
    /// (iptables' `statistic` match: the loss `tc netem` would give, which this machine lacks).
    pub fn drop_random(&self, i: usize, percent: u32) {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for j in (0..self.len()).filter(|j| *j != i) {
            let other = self.addr(j);
            for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
                self.ipt(
                    i,
                    &[
                        "-A",
                        chain,
                        dir,
                        &other,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                );
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for i in 0..self.len() {
            self.ipt(i, &["-F", "INPUT"]);
            self.ipt(i, &["-F", "OUTPUT"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&[
            "iptables",
            "-D",
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
