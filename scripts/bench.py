#!/usr/bin/env python3
"""Side-by-side benchmark of oxcd and the real etcd on the same machine, in the same run.

For each cluster size (1 and 3 members) it starts an etcd cluster and an oxcd cluster with the same
flags on free loopback ports, runs the same oxcd-bench workloads against each (alternating, so that
machine noise hits both), measures leader failover (SIGKILL of the leader to the first successful
write) on three members, stops everything, and prints a table with oxcd/etcd ratios.

Ratios, not absolute numbers, are the result: the machine is shared and noisy.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(env, name):
    p = os.environ.get(env)
    if p:
        return p
    cand = os.path.join(sysconfig.get_path("scripts"), name)
    return cand if os.path.exists(cand) else name


class Cluster:
    """n members of `binary` on loopback; stopped by stop()."""

    def __init__(self, kind, binary, n, workdir, extra=()):
        self.kind, self.binary, self.n = kind, binary, n
        self.dir = os.path.join(workdir, kind + str(n))
        os.makedirs(self.dir)
        self.members = []
        for i in range(n):
            self.members.append({"name": f"m{i}", "client": free_port(), "peer": free_port()})
        ic = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in self.members)
        for m in self.members:
            m["args"] = [
                binary,
                f"--name={m['name']}",
                f"--data-dir={os.path.join(self.dir, m['name'])}",
                f"--listen-client-urls=http://127.0.0.1:{m['client']}",
                f"--advertise-client-urls=http://127.0.0.1:{m['client']}",
                f"--listen-peer-urls=http://127.0.0.1:{m['peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{m['peer']}",
                f"--initial-cluster={ic}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=bench",
                *extra,
            ]
            self.start(m)

    def start(self, m):
        log = open(os.path.join(self.dir, m["name"] + ".log"), "ab")
        m["proc"] = subprocess.Popen(m["args"], stdout=log, stderr=log)

    def endpoints(self, members=None):
        return ",".join(f"127.0.0.1:{m['client']}" for m in (members or self.members))

    def ctl(self, *args, endpoints=None):
        return subprocess.run(
            [tool("ETCDCTL", "etcdctl"), f"--endpoints={endpoints or self.endpoints()}",
             "--dial-timeout=2s", "--command-timeout=5s", *args],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})

    def wait_healthy(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.leader() is not None and self.ctl("put", "bench-ready", "x").returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} cluster of {self.n} did not become healthy")

    def leader(self):
        """The member every running member agrees is leader, or None."""
        running = [m for m in self.members if m["proc"].poll() is None]
        r = self.ctl("endpoint", "status", "-w", "json", endpoints=self.endpoints(running))
        if r.returncode != 0:
            return None
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return None
        leaders = {s["Status"].get("leader", 0) for s in st}
        if len(leaders) != 1 or 0 in leaders or len(st) != len(running):
            return None
        lid = leaders.pop()
        for m, s in zip(running, st):
            if s["Status"].get("header", {}).get("member_id") == lid:
                return m
        return None

    def stop(self):
        for m in self.members:
            p = m.get("proc")
            if p and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def bench(bench_bin, endpoints, clients, conns, sub):
    r = subprocess.run(
        [bench_bin, f"--endpoints={endpoints}", f"--clients={clients}", f"--conns={conns}",
         "--json", *sub], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"oxcd-bench {sub} failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def workloads(scale):
    """(label, clients, conns, oxcd-bench args)."""
    t1, tn = str(int(1000 * scale)), str(int(20000 * scale))
    return [
        ("put, 1 client", 1, 1,
         ["put", f"--total={t1}", "--key-size=8", "--val-size=256", "--key-space-size=100000"]),
        ("put, 100 clients / 10 conns", 100, 10,
         ["put", f"--total={tn}", "--key-size=8", "--val-size=256", "--key-space-size=100000"]),
        ("range linearizable, 100 clients / 10 conns", 100, 10,
         ["range", "bench-ready", f"--total={tn}", "--consistency=l"]),
        ("range serializable, 100 clients / 10 conns", 100, 10,
         ["range", "bench-ready", f"--total={tn}", "--consistency=s"]),
    ]


def failover(c, bench_bin):
    leader = c.leader()
    others = [m for m in c.members if m is not leader]
    leader["proc"].send_signal(signal.SIGKILL)
    leader["proc"].wait()
    t0 = time.time()
    r = subprocess.run([bench_bin, f"--endpoints={c.endpoints(others)}", "--conns=2", "--json",
                        "first-write", "--timeout=60s", "--attempt=300ms"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"no write after failover: {r.stderr}")
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--sizes", default="1,3", help="cluster sizes to run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies request totals")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each workload, keep the best")
    ap.add_argument("--failovers", type=int, default=3, help="leader SIGKILLs per server kind")
    ap.add_argument("--no-watch", dest="watch", action="store_false", help="skip the watch workloads")
    ap.add_argument("--no-lease", dest="lease", action="store_false", help="skip the lease workloads")
    args = ap.parse_args()
    bench_bin = os.path.join(args.bin_dir, "oxcd-bench")
    oxcd_bin = os.path.join(args.bin_dir, "oxcd")
    etcd_bin = tool("ETCD", "etcd")
    ver = subprocess.run([etcd_bin, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"# oxcd vs {ver}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}\n")
    workdir = tempfile.mkdtemp(prefix="oxcd-bench-")
    rows = []
    watch_rows = []
    expiry_rows = []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            clusters = {}
            try:
                for kind, binary in (("etcd", etcd_bin), ("oxcd", oxcd_bin)):
                    clusters[kind] = Cluster(kind, binary, n, workdir)
                for c in clusters.values():
                    c.wait_healthy()
                for label, clients, conns, sub in workloads(args.scale):
                    best = {}
                    for _ in range(args.rounds):
                        for kind, c in clusters.items():
                            r = bench(bench_bin, c.endpoints(), clients, conns, sub)
                            if r["errors"]:
                                print(f"warning: {kind} {label}: {r['errors']} errors "
                                      f"({r['first_error']})", file=sys.stderr)
                            if kind not in best or r["requests_per_sec"] > best[kind]["requests_per_sec"]:
                                best[kind] = r
                    rows.append((n, label, best["etcd"], best["oxcd"]))
                if args.lease:
                    best = {}
                    for _ in range(args.rounds):
                        for kind, c in clusters.items():
                            r = bench(bench_bin, c.endpoints(), 100, 10,
                                      ["lease-keepalive", "--leases=1000",
                                       f"--total={int(20000 * args.scale)}"])
                            if r["errors"]:
                                print(f"warning: {kind} lease-keepalive: {r['errors']} errors "
                                      f"({r['first_error']})", file=sys.stderr)
                            if kind not in best or r["requests_per_sec"] > best[kind]["requests_per_sec"]:
                                best[kind] = r
                    rows.append((n, "lease keep-alive, 1000 leases, 100 streams / 10 conns",
                                 best["etcd"], best["oxcd"]))
                    exp = {}
                    for kind, c in clusters.items():
                        exp[kind] = bench(bench_bin, c.endpoints(), 1, 3,
                                          ["lease-expiry", "--leases=200", "--ttl=2"])
                    expiry_rows.append((n, exp))
                if n == 1 and args.watch:
                    fan = {}
                    for kind, c in clusters.items():
                        fan[kind] = bench(bench_bin, c.endpoints(), 1, 10,
                                          ["watch", "--watchers=1000", f"--total={int(300 * args.scale)}",
                                           "--put-rate=100"])
                    watch_rows.append(("watch fan-out: 1000 watchers, 1 writer at 100 puts/s", fan))
                    stalled = {}
                    for kind, c in clusters.items():
                        stalled[kind] = bench(bench_bin, c.endpoints(), 100, 10,
                                              ["put", f"--total={int(20000 * args.scale)}", "--val-size=256",
                                               "--key-space-size=100000", "--stalled-watchers=1000"])
                    rows.append((n, "put, 100 clients / 10 conns, 1000 stalled watchers",
                                 stalled["etcd"], stalled["oxcd"]))
            finally:
                for c in clusters.values():
                    c.stop()
            if n >= 3 and args.failovers > 0:
                times = {"etcd": [], "oxcd": []}
                for _ in range(args.failovers):
                    for kind, binary in (("etcd", etcd_bin), ("oxcd", oxcd_bin)):
                        c = Cluster(kind, binary, n, workdir + f"/fo{len(times[kind])}")
                        try:
                            c.wait_healthy()
                            times[kind].append(failover(c, bench_bin))
                        finally:
                            c.stop()
                rows.append((n, "failover", times["etcd"], times["oxcd"]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("| members | workload | etcd req/s | oxcd req/s | oxcd/etcd | etcd p50/p99 ms | oxcd p50/p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for n, label, e, o in rows:
        if label == "failover":
            em, om = sorted(e)[len(e) // 2], sorted(o)[len(o) // 2]
            print(f"| {n} | leader SIGKILL to first write (median of {len(e)}), s | {em:.2f} | "
                  f"{om:.2f} | {om / em:.2f} | {', '.join(f'{x:.2f}' for x in e)} | "
                  f"{', '.join(f'{x:.2f}' for x in o)} |")
            continue
        ratio = o["requests_per_sec"] / max(e["requests_per_sec"], 1e-9)
        print(f"| {n} | {label} | {e['requests_per_sec']:.0f} | {o['requests_per_sec']:.0f} | "
              f"{ratio:.2f} | {e['latency_ms']['p50']:.2f} / {e['latency_ms']['p99']:.2f} | "
              f"{o['latency_ms']['p50']:.2f} / {o['latency_ms']['p99']:.2f} |")
    if watch_rows:
        print()
        print("| workload | etcd events/s | oxcd events/s | oxcd/etcd | etcd delivery p50/p99 ms | oxcd delivery p50/p99 ms |")
        print("|---|---|---|---|---|---|")
        for label, f in watch_rows:
            e, o = f["etcd"], f["oxcd"]
            print(f"| {label} | {e['events_per_sec']:.0f} | {o['events_per_sec']:.0f} | "
                  f"{o['events_per_sec'] / max(e['events_per_sec'], 1e-9):.2f} | "
                  f"{e['latency_ms']['p50']:.1f} / {e['latency_ms']['p99']:.1f} | "
                  f"{o['latency_ms']['p50']:.1f} / {o['latency_ms']['p99']:.1f} |")
    if expiry_rows:
        print()
        print("| members | lease expiry to DELETE event, 200 leases of 2 s | etcd p50 / p99 / max ms | "
              "oxcd p50 / p99 / max ms | oxcd/etcd p50 |")
        print("|---|---|---|---|---|")
        for n, f in expiry_rows:
            e, o = f["etcd"]["expiry_to_delete_ms"], f["oxcd"]["expiry_to_delete_ms"]
            print(f"| {n} | | {e['p50']:.0f} / {e['p99']:.0f} / {e['max']:.0f} | "
                  f"{o['p50']:.0f} / {o['p99']:.0f} / {o['max']:.0f} | "
                  f"{o['p50'] / max(e['p50'], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
