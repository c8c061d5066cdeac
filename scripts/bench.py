#!/usr/bin/env python3
"""Side-by-side benchmark of oxcd and the real etcd on the same machine, in the same run.

For each cluster size (1 and 3 members) it starts an etcd cluster and an oxcd cluster with the same
flags on free loopback ports and runs the same oxcd-bench workloads against each, --rounds times;
within a round the two kinds run one after the other (the order flips every round), so that
machine noise hits both. A row reports, per kind, the median over the rounds of each number.
It also measures leader failover (SIGKILL of the leader to the first successful write) on three
members, and the resident memory of a 1-member cluster of each kind holding 100,000 keys.

Server CPU: the user+system time of every member process (from /proc/<pid>/stat), read just before
and just after each oxcd-bench run, divided by the requests that succeeded (events delivered, for
watch fan-out). It covers the whole run, set-up included: creating the watchers of a watch run,
granting and revoking the leases of a keep-alive run.

Ratios, not absolute numbers, are the result: the machine is shared and noisy. The last table, the
ratios only, is markdown to paste into README.md.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import namedtuple

KINDS = ("etcd", "oxcd")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# One oxcd-bench workload. `table` is "load" (requests/s) or "watch" (events/s); `single` runs it
# only on 1-member clusters; `needs` names the command-line switch that can turn it off.
Workload = namedtuple("Workload", "label clients conns args table single needs")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(env, name):
    """The path of a tool: $env if set, else `name` next to this Python's scripts, else `name`."""
    p = os.environ.get(env)
    if p:
        return p
    cand = os.path.join(sysconfig.get_path("scripts"), name)
    return cand if os.path.exists(cand) else name


def cpu_ticks(pids):
    """{pid: utime + stime in clock ticks} of the live processes among `pids`.

    The pip-installed etcd launcher execs the real binary, so its pid is the server's."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: count fields after its closing paren.
        fields = stat[stat.rindex(")") + 2:].split()
        out[pid] = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return out


def cpu_seconds_between(before, after):
    """CPU seconds used between two cpu_ticks() readings by the processes present in both."""
    return sum(after[p] - before[p] for p in before if p in after) / CLK_TCK


def memory_kib(pids):
    """(VmRSS, RssAnon) in KiB, summed over the live processes among `pids`."""
    rss = anon = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
        except OSError:
            continue
    return rss, anon


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
        """Starts member `m`, its output appended to <name>.log in the cluster's directory."""
        log = open(os.path.join(self.dir, m["name"] + ".log"), "ab")
        m["proc"] = subprocess.Popen(m["args"], stdout=log, stderr=log)

    def pids(self):
        """The process IDs of the running members."""
        return [m["proc"].pid for m in self.members if m["proc"].poll() is None]

    def endpoints(self, members=None):
        """Comma-separated client endpoints of `members` (default: all)."""
        return ",".join(f"127.0.0.1:{m['client']}" for m in (members or self.members))

    def ctl(self, *args, endpoints=None):
        """Runs etcdctl against the cluster; returns the CompletedProcess."""
        return subprocess.run(
            [tool("ETCDCTL", "etcdctl"), f"--endpoints={endpoints or self.endpoints()}",
             "--dial-timeout=2s", "--command-timeout=5s", *args],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})

    def wait_healthy(self, timeout=60):
        """Waits until the members agree on a leader and a put succeeds."""
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
        """SIGKILLs every running member."""
        for m in self.members:
            p = m.get("proc")
            if p and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def bench(bench_bin, endpoints, clients, conns, sub):
    """Runs oxcd-bench once against `endpoints`; returns its JSON result, or raises RuntimeError
    if it fails (scripts/bench_scale.py uses this too)."""
    r = subprocess.run(
        [bench_bin, f"--endpoints={endpoints}", f"--clients={clients}", f"--conns={conns}",
         "--json", *sub], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"oxcd-bench {sub} failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(bench_bin, cluster, clients, conns, sub):
    """Runs oxcd-bench once against `cluster`; returns its JSON result, to which it adds:

    "cpu_s": CPU seconds of all the members over the run; "ok": successful requests (events
    delivered, for watch); "cpu_us_per_req": cpu_s per ok request, in microseconds; and, if
    the run failed, "failed": why (the rest of the result is then whatever oxcd-bench printed).
    """
    pids = cluster.pids()
    before = cpu_ticks(pids)
    r = subprocess.run(
        [bench_bin, f"--endpoints={cluster.endpoints()}", f"--clients={clients}",
         f"--conns={conns}", "--json", *sub], capture_output=True, text=True)
    cpu = cpu_seconds_between(before, cpu_ticks(pids))
    lines = r.stdout.strip().splitlines()
    try:
        res = json.loads(lines[-1]) if lines else {}
    except ValueError:
        res = {}
    if r.returncode != 0 or not res:
        res["failed"] = r.stderr.strip() or f"oxcd-bench exited with {r.returncode}"
    if res.get("op") == "watch":
        ok = res.get("events", 0)
    else:
        ok = res.get("total", 0) - res.get("errors", 0)
    res.update(cpu_s=cpu, ok=ok, cpu_us_per_req=cpu * 1e6 / ok if ok > 0 else None)
    return res


def scaled(n, scale):
    """n * scale, at least 1, as the string oxcd-bench wants."""
    return str(max(1, int(n * scale)))


def workloads(scale):
    """The oxcd-bench workloads, in the order they run.

    No label of a workload that is not a plain put contains "put", so that `--only put` selects
    the put workloads."""
    t1, tn = scaled(1000, scale), scaled(20000, scale)
    put = ["--key-size=8", "--val-size=256", "--key-space-size=100000"]
    return [
        Workload("put, 1 client", 1, 1, ["put", f"--total={t1}", *put], "load", False, None),
        Workload("put, 100 clients / 10 conns", 100, 10,
                 ["put", f"--total={tn}", *put], "load", False, None),
        Workload("put, 1000 clients / 100 conns", 1000, 100,
                 ["put", f"--total={tn}", *put], "load", False, None),
        Workload("put, 64 KiB values, 10 clients / 10 conns", 10, 10,
                 ["put", f"--total={scaled(2000, scale)}", "--key-size=8", "--val-size=65536",
                  "--key-space-size=100000"], "load", False, None),
        Workload("txn of 4 writes, 100 clients / 10 conns", 100, 10,
                 ["txn", "--ops=4", f"--total={scaled(10000, scale)}", *put], "load", False, None),
        Workload("mixed, 90% linearizable reads / 10% writes, 100 clients / 10 conns", 100, 10,
                 ["mixed", "--read-percent=90", "--consistency=l", f"--total={tn}", *put],
                 "load", False, None),
        Workload("range linearizable, 100 clients / 10 conns", 100, 10,
                 ["range", "bench-ready", f"--total={tn}", "--consistency=l"], "load", False, None),
        Workload("range serializable, 100 clients / 10 conns", 100, 10,
                 ["range", "bench-ready", f"--total={tn}", "--consistency=s"], "load", False, None),
        Workload("lease keep-alive, 1000 leases, 100 streams / 10 conns", 100, 10,
                 ["lease-keepalive", "--leases=1000", f"--total={tn}"], "load", False, "lease"),
        Workload("lease keep-alive, 10000 leases, 100 streams / 10 conns", 100, 10,
                 ["lease-keepalive", "--leases=10000", f"--total={tn}"], "load", False, "lease"),
        # The writer's rate asks for more events per second than either server delivers (1M/s
        # and 3M/s): a rate both can meet would only measure the rate (a ratio of 1.00).
        Workload("watch fan-out, 1000 watchers on 10 streams, 1 writer at 1000/s", 1, 10,
                 ["watch", "--watchers=1000", f"--total={scaled(3000, scale)}", "--put-rate=1000"],
                 "watch", True, "watch"),
        Workload("watch fan-out, 10000 watchers on 100 streams, 1 writer at 300/s", 1, 100,
                 ["watch", "--watchers=10000", f"--total={scaled(900, scale)}", "--put-rate=300"],
                 "watch", True, "watch"),
        Workload("put, 100 clients / 10 conns, 1000 stalled watchers", 100, 10,
                 ["put", f"--total={tn}", *put, "--stalled-watchers=1000"], "load", True, "watch"),
    ]


EXPIRY_LABEL = "lease expiry to DELETE event, 200 leases of 2 s"
FAILOVER_LABEL = "leader SIGKILL to first write"
MEMORY_KEYS = 100000
MEMORY_LABEL = f"resident memory, 1 member holding {MEMORY_KEYS} keys with 256 B values"


def selected(label, args):
    """Whether `--only` (comma-separated substrings, any case) lets `label` run."""
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    return not only or any(s in label.lower() for s in only)


def run_rounds(clusters, rounds, run, label):
    """Calls run(cluster) `rounds` times per kind, the kinds alternating (the order flips every
    round); returns {kind: [result, ...]}. Prints a warning for each failed or erroring run."""
    out = {k: [] for k in clusters}
    for i in range(rounds):
        for kind in (KINDS if i % 2 == 0 else KINDS[::-1]):
            r = run(clusters[kind])
            if r.get("failed"):
                print(f"warning: {kind} {label}: failed: {r['failed']}", file=sys.stderr)
            elif r.get("errors") or r.get("put_errors"):
                why = r.get("errors_by_message") or r.get("first_error")
                print(f"warning: {kind} {label}: {r.get('errors') or r.get('put_errors')} errors "
                      f"({why})", file=sys.stderr)
            out[kind].append(r)
    return out


def median(results, get):
    """The median of get(r) over the results that did not fail and have a value, or None."""
    vals = []
    for r in results:
        if r.get("failed"):
            continue
        try:
            v = get(r)
        except (KeyError, TypeError):
            continue
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def fmt(v, spec=".0f"):
    """`v` formatted, or "-" for None."""
    return "-" if v is None else format(v, spec)


def ratio(o, e):
    """o / e formatted, or "-" when either is missing or e is 0."""
    return "-" if o is None or e is None or e == 0 else f"{o / e:.2f}"


def summarize(n, w, res):
    """One summary row of workload `w` run on `n` members: medians per kind, errors, failures."""
    rate = "events_per_sec" if w.table == "watch" else "requests_per_sec"
    row = {"n": n, "label": w.label, "table": w.table}
    for kind in KINDS:
        rs = res[kind]
        row[kind] = {
            "rate": median(rs, lambda r: r[rate]),
            "p50": median(rs, lambda r: r["latency_ms"]["p50"]),
            "p99": median(rs, lambda r: r["latency_ms"]["p99"]),
            "cpu": median(rs, lambda r: r["cpu_us_per_req"]),
            "errors": sum(r.get("errors", 0) or r.get("put_errors", 0) for r in rs),
            "failed": sum(1 for r in rs if r.get("failed")),
            "rounds": len(rs),
        }
    return row


def memory(etcd_bin, oxcd_bin, bench_bin, workdir):
    """Loads MEMORY_KEYS keys into a fresh 1-member cluster of each kind; returns
    {kind: {"idle": (rss, anon), "loaded": (rss, anon), "load": bench result}} (KiB)."""
    out = {}
    for kind, binary in (("etcd", etcd_bin), ("oxcd", oxcd_bin)):
        c = Cluster(kind, binary, 1, os.path.join(workdir, "memory"))
        try:
            c.wait_healthy()
            time.sleep(1)
            idle = memory_kib(c.pids())
            r = measure(bench_bin, c, 100, 10,
                        ["put", "--sequential-keys", f"--key-space-size={MEMORY_KEYS}",
                         f"--total={MEMORY_KEYS}", "--key-size=8", "--val-size=256"])
            if r.get("failed") or r.get("errors"):
                print(f"warning: {kind} memory load: {r.get('failed') or r.get('first_error')}",
                      file=sys.stderr)
            time.sleep(2)
            out[kind] = {"idle": idle, "loaded": memory_kib(c.pids()), "load": r}
        finally:
            c.stop()
    return out


def failover(c, bench_bin):
    """SIGKILLs the leader of `c`; returns the seconds until a write succeeds on the others."""
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


def print_load_table(rows):
    """The requests/s table: throughput, latency, server CPU per request, errors."""
    print("| members | workload | etcd req/s | oxcd req/s | oxcd/etcd | etcd p50/p99 ms | "
          "oxcd p50/p99 ms | etcd CPU µs/req | oxcd CPU µs/req | oxcd/etcd CPU | errors etcd/oxcd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["table"] == "failover":
            e, o = row["etcd"], row["oxcd"]
            em, om = statistics.median(e), statistics.median(o)
            print(f"| {row['n']} | {row['label']} (median of {len(e)}), s | {em:.2f} | {om:.2f} | "
                  f"{om / em:.2f} | {', '.join(f'{x:.2f}' for x in e)} | "
                  f"{', '.join(f'{x:.2f}' for x in o)} | | | | |")
            continue
        if row["table"] != "load":
            continue
        e, o = row["etcd"], row["oxcd"]
        print(f"| {row['n']} | {row['label']} | {fmt(e['rate'])} | {fmt(o['rate'])} | "
              f"{ratio(o['rate'], e['rate'])} | {fmt(e['p50'], '.2f')} / {fmt(e['p99'], '.2f')} | "
              f"{fmt(o['p50'], '.2f')} / {fmt(o['p99'], '.2f')} | {fmt(e['cpu'])} | "
              f"{fmt(o['cpu'])} | {ratio(o['cpu'], e['cpu'])} | {errors_cell(e)} / {errors_cell(o)} |")


def errors_cell(s):
    """Errors of a kind, plus how many of its rounds failed outright."""
    cell = str(s["errors"])
    if s["failed"]:
        cell += f" ({s['failed']} of {s['rounds']} runs failed)"
    return cell


def print_watch_table(rows):
    """The events/s table of the watch fan-out workloads."""
    print("| workload | etcd events/s | oxcd events/s | oxcd/etcd | etcd delivery p50/p99 ms | "
          "oxcd delivery p50/p99 ms | etcd CPU µs/event | oxcd CPU µs/event | oxcd/etcd CPU | "
          "errors etcd/oxcd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        e, o = row["etcd"], row["oxcd"]
        print(f"| {row['label']} | {fmt(e['rate'])} | {fmt(o['rate'])} | {ratio(o['rate'], e['rate'])} | "
              f"{fmt(e['p50'], '.1f')} / {fmt(e['p99'], '.1f')} | "
              f"{fmt(o['p50'], '.1f')} / {fmt(o['p99'], '.1f')} | {fmt(e['cpu'], '.1f')} | "
              f"{fmt(o['cpu'], '.1f')} | {ratio(o['cpu'], e['cpu'])} | "
              f"{errors_cell(e)} / {errors_cell(o)} |")


def print_expiry_table(rows):
    """The lease expiry latency table (medians over the rounds)."""
    print(f"| members | {EXPIRY_LABEL} | etcd p50 / p99 / max ms | oxcd p50 / p99 / max ms | "
          "oxcd/etcd p50 |")
    print("|---|---|---|---|---|")
    for n, res in rows:
        m = {k: {q: median(res[k], lambda r, q=q: r["expiry_to_delete_ms"][q])
                 for q in ("p50", "p99", "max")} for k in KINDS}
        e, o = m["etcd"], m["oxcd"]
        print(f"| {n} | | {fmt(e['p50'])} / {fmt(e['p99'])} / {fmt(e['max'])} | "
              f"{fmt(o['p50'])} / {fmt(o['p99'])} / {fmt(o['max'])} | {ratio(o['p50'], e['p50'])} |")


def print_memory_table(mem):
    """The resident memory table (MiB)."""
    mib = lambda kib: kib / 1024  # noqa: E731
    e, o = mem["etcd"], mem["oxcd"]
    print(f"| {MEMORY_LABEL} | etcd MiB | oxcd MiB | oxcd/etcd |")
    print("|---|---|---|---|")
    for what, key in (("idle, VmRSS", "idle"), ("loaded, VmRSS", "loaded")):
        print(f"| {what} | {mib(e[key][0]):.1f} | {mib(o[key][0]):.1f} | "
              f"{ratio(o[key][0], e[key][0])} |")
    print(f"| loaded, of which anonymous (RssAnon) | {mib(e['loaded'][1]):.1f} | "
          f"{mib(o['loaded'][1]):.1f} | {ratio(o['loaded'][1], e['loaded'][1])} |")


def print_summary(rows, mem):
    """The ratios only, as markdown for README.md: one table of throughput and CPU per request,
    then failover time and resident memory as a list."""
    print("| members | workload | throughput oxcd/etcd | server CPU per request oxcd/etcd |")
    print("|---|---|---|---|")
    for row in rows:
        if row["table"] not in ("load", "watch"):
            continue
        e, o = row["etcd"], row["oxcd"]
        print(f"| {row['n']} | {row['label']} | {ratio(o['rate'], e['rate'])} | "
              f"{ratio(o['cpu'], e['cpu'])} |")
    notes = []
    for row in rows:
        if row["table"] == "failover":
            em, om = statistics.median(row["etcd"]), statistics.median(row["oxcd"])
            notes.append(f"- {FAILOVER_LABEL}, {row['n']} members, median of "
                         f"{len(row['etcd'])}: time oxcd/etcd {ratio(om, em)}")
    if mem:
        e, o = mem["etcd"]["loaded"][0], mem["oxcd"]["loaded"][0]
        notes.append(f"- {MEMORY_LABEL}: VmRSS oxcd/etcd {ratio(o, e)}")
    if notes:
        print()
        print("\n".join(notes))


def run_size(n, args, bins, workdir, rows, expiry_rows):
    """Runs every selected workload on a fresh n-member cluster of each kind."""
    etcd_bin, oxcd_bin, bench_bin = bins
    todo = [w for w in workloads(args.scale)
            if selected(w.label, args) and not (w.single and n != 1)
            and (w.needs is None or getattr(args, w.needs))]
    expiry = args.lease and selected(EXPIRY_LABEL, args)
    if not todo and not expiry:
        return
    clusters = {}
    try:
        for kind, binary in (("etcd", etcd_bin), ("oxcd", oxcd_bin)):
            clusters[kind] = Cluster(kind, binary, n, workdir)
        for c in clusters.values():
            c.wait_healthy()
        for w in todo:
            print(f"[{n} member(s)] {w.label}", file=sys.stderr, flush=True)
            res = run_rounds(clusters, args.rounds,
                             lambda c: measure(bench_bin, c, w.clients, w.conns, w.args), w.label)
            rows.append(summarize(n, w, res))
        if expiry:
            print(f"[{n} member(s)] {EXPIRY_LABEL}", file=sys.stderr, flush=True)
            res = run_rounds(clusters, args.rounds,
                             lambda c: measure(bench_bin, c, 1, 3,
                                               ["lease-expiry", "--leases=200", "--ttl=2"]),
                             EXPIRY_LABEL)
            expiry_rows.append((n, res))
    finally:
        for c in clusters.values():
            c.stop()


def run_failovers(n, args, bins, workdir, rows):
    """Measures `--failovers` leader SIGKILLs per kind, each on a fresh n-member cluster."""
    etcd_bin, oxcd_bin, bench_bin = bins
    print(f"[{n} member(s)] {FAILOVER_LABEL}", file=sys.stderr, flush=True)
    times = {"etcd": [], "oxcd": []}
    for _ in range(args.failovers):
        for kind, binary in (("etcd", etcd_bin), ("oxcd", oxcd_bin)):
            c = Cluster(kind, binary, n, workdir + f"/fo{len(times[kind])}")
            try:
                c.wait_healthy()
                times[kind].append(failover(c, bench_bin))
            finally:
                c.stop()
    rows.append({"n": n, "label": FAILOVER_LABEL, "table": "failover", **times})


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release", help="where oxcd and oxcd-bench are")
    ap.add_argument("--sizes", default="1,3", help="cluster sizes to run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies request totals")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each workload per kind; rows report the median")
    ap.add_argument("--failovers", type=int, default=3, help="leader SIGKILLs per server kind")
    ap.add_argument("--only", default="",
                    help="comma-separated substrings (any case) of the workload labels to run, "
                         "e.g. 'put' or '1000 clients,memory'")
    ap.add_argument("--no-watch", dest="watch", action="store_false", help="skip the watch workloads")
    ap.add_argument("--no-lease", dest="lease", action="store_false", help="skip the lease workloads")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the resident memory measurement")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    bench_bin = os.path.join(args.bin_dir, "oxcd-bench")
    oxcd_bin = os.path.join(args.bin_dir, "oxcd")
    etcd_bin = tool("ETCD", "etcd")
    bins = (etcd_bin, oxcd_bin, bench_bin)
    sizes = [int(s) for s in args.sizes.split(",")]
    ver = subprocess.run([etcd_bin, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"# oxcd vs {ver}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"scale {args.scale}, median of {args.rounds} round(s)\n")
    workdir = tempfile.mkdtemp(prefix="oxcd-bench-")
    rows, expiry_rows, mem = [], [], None
    try:
        for n in sizes:
            run_size(n, args, bins, workdir, rows, expiry_rows)
            if n >= 3 and args.failovers > 0 and selected(FAILOVER_LABEL, args):
                run_failovers(n, args, bins, workdir, rows)
        if 1 in sizes and args.memory and selected(MEMORY_LABEL, args):
            print(f"[1 member] {MEMORY_LABEL}", file=sys.stderr, flush=True)
            mem = memory(etcd_bin, oxcd_bin, bench_bin, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if any(r["table"] in ("load", "failover") for r in rows):
        print_load_table(rows)
    watch_rows = [r for r in rows if r["table"] == "watch"]
    if watch_rows:
        print()
        print_watch_table(watch_rows)
    if expiry_rows:
        print()
        print_expiry_table(expiry_rows)
    if mem:
        print()
        print_memory_table(mem)
    if rows or mem:
        print("\n## Summary: oxcd/etcd ratios (throughput above 1 and CPU per request below 1 "
              "favour oxcd)\n")
        print_summary(rows, mem)


if __name__ == "__main__":
    main()
