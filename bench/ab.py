"""Two revisions of geproxy in one run: alternating rounds, compared pair by pair.

Why: on this shared machine req/s drift by tens of percent from one minute to
the next, so a change worth 10-20 % of the proxy's CPU does not show in two
separate runs of throughput.py, nor always in the medians of one.  Here each
round runs wrk against A, then B (then the Go proxy with ``--go``), and the
figure to read is the median of B/A over the pairs of rounds, with every pair
listed.

Each revision is ``git archive``d into a folder of its own and its proxy runs
from there (``ProxyProcess(package_root=...)``); the bench itself, the cluster
and wrk are this checkout's.  The same revision twice with different flags
(``--a-args``/``--b-args``) compares options instead.

    .venv/bin/python bench/ab.py HEAD~1 HEAD                  # GETs, wrk -c50
    .venv/bin/python bench/ab.py HEAD~1 HEAD --mixed --go     # 10 % PUTs, and Go
    .venv/bin/python bench/ab.py HEAD HEAD --b-args="--workers 2"
"""

import argparse
import os
import shlex
import shutil
import subprocess
import tempfile

import harness  # first of bench/'s modules: it makes geproxy importable
from harness import log
from proxies import GoProxy
from target import Target
from throughput import Config, measure, paired

from geproxy.testing import ProxyProcess

PATH = "/v2/keys/" + harness.BENCH_KEY


def checkout(rev, into):
    """The geproxy package of ``rev`` in a folder of its own under ``into``."""
    root = os.path.join(into, rev.replace("/", "_"))
    if not os.path.isdir(root):
        os.makedirs(root)
        archive = subprocess.run(["git", "archive", rev, "geproxy"], cwd=harness.ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="the revision compared against (git rev)")
    ap.add_argument("b", help="the revision compared (git rev)")
    ap.add_argument("--a-args", default="", help="extra flags for A's proxy")
    ap.add_argument("--b-args", default="", help="extra flags for B's proxy")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("-d", "--duration", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("-c", "--connections", type=int, default=50)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--mixed", action="store_true", help="10 %% PUTs (mixed.lua)")
    ap.add_argument("--go", action="store_true", help="the Go proxy in each round too")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--etcd-bin", default=shutil.which("etcd") or "etcd")
    args = ap.parse_args()

    target = Target().start()
    procs = []
    scratch = tempfile.mkdtemp(prefix="geproxy-ab-")
    try:
        target.put(harness.BENCH_KEY, "ab")
        n = len(target.members)
        configs = []
        for name, rev, extra in (("A " + args.a, args.a, args.a_args),
                                 ("B " + args.b, args.b, args.b_args)):
            proxy = ProxyProcess(target.initial_cluster, args=["--log-level", "warn"] + shlex.split(extra),
                                 package_root=checkout(rev, scratch))
            procs.append(proxy)
            proxy.start(endpoints=n)
            label = name + (" " + extra if extra else "")
            log("%s: pid %d on %s" % (label, proxy.pid, proxy.url))
            configs.append(Config(label, "ours", proxy.url, proxy.pid, args.connections,
                                  mixed=args.mixed))
        if args.go:
            go = GoProxy(target.initial_cluster, etcd_bin=args.etcd_bin)
            procs.append(go)
            go.start(endpoints=n)
            configs.append(Config("go (etcd --proxy on)", "go", go.url, go.pid,
                                  args.connections, mixed=args.mixed))
        members = [m.pid for m in target.members if m.pid]
        for cfg in configs:  # warm up: connections made, pipes open
            measure(args, cfg, PATH, duration=1)
        for r in range(args.rounds):
            for cfg in configs:
                res = measure(args, cfg, PATH, members=members)
                cfg.runs.append(res)
                log("[round %d/%d] %-40s %7.0f req/s  proxy %5.1f µs/req  members %5.1f"
                    % (r + 1, args.rounds, cfg.name, res["rps"], res.get("cpu_us") or 0,
                       res.get("members_us") or 0))
        report(configs, args)
    finally:
        for p in reversed(procs):
            p.stop()
        target.close()
        shutil.rmtree(scratch, ignore_errors=True)


def report(configs, args):
    a = configs[0]
    print("\nwrk -c%d -d%ds%s, %d alternating rounds; B/A per pair of rounds"
          % (args.connections, args.duration, ", 10% PUT" if args.mixed else "", args.rounds))
    for cfg in configs:
        print("%-40s req/s median %7.0f  proxy %5.1f µs/req  members %5.1f µs/req"
              % (cfg.name, cfg.median("rps"), cfg.median("cpu_us") or 0,
                 cfg.median("members_us") or 0))
    for cfg in configs[1:]:
        rps, ratios = paired(a, cfg)
        cpu, cpu_ratios = paired(a, cfg, "cpu_us")
        print("%s / %s: req/s ratio median %.3f (%s); proxy CPU per request ratio median %s"
              % (cfg.name, a.name, rps, " ".join("%.2f" % x for x in ratios),
                 "%.3f" % cpu if cpu_ratios else "-"))


if __name__ == "__main__":
    main()
