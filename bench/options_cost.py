"""What the metrics and the access log cost: GET throughput with each on and off, same run.

Starts a local 3-member etcd cluster (or uses --members), writes one key and
starts three of our proxies (one process each, native transport):

* ``metrics off``: ``--metrics off``, nothing counted (the baseline);
* ``metrics on``: the default (``--metrics basic``);
* ``metrics on + access log``: ``--access-log`` too (its lines go to the
  proxy's log file, as they would to a platform's log pipe).

Then in rounds, one after the other (the order rotates each round), the same
wrk command (GET of that key, ``-t1 -c50 -d5s``) against each, and the proxy's
CPU per request from /proc.  This machine is shared and its load moves, so the
figures to read are the ratios to ``metrics off`` within each round (same
minute, same load), summarised as their median; the issue's target is metrics
on within 5 % of off.

    .venv/bin/python bench/options_cost.py
    .venv/bin/python bench/options_cost.py --rounds 9 --duration 5
"""

import argparse
import json
import os
import shutil
import sys
from statistics import median

import harness  # first of bench/'s modules: it makes geproxy importable
from harness import log
from proxies import proxy_args, start_ours
from tables import table
from target import Target
from throughput import Config, measure, run_wrk

TARGET_RATIO = 0.95  # req/s with metrics on, over off

VARIANTS = (  # (name, our extra flags)
    ("metrics off", ["--metrics", "off"]),
    ("metrics on", []),
    ("metrics on + access log", ["--access-log"]),
)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds over the variants (default 7)")
    ap.add_argument("--threads", "-t", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--connections", "-c", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--duration", "-d", type=int, default=5, help="wrk -d in s (default 5)")
    ap.add_argument("--members", help="client URLs of existing members, comma-separated")
    ap.add_argument("--initial-cluster", help="name=peerURL,... for the proxies (with --members)")
    ap.add_argument("--key", default=harness.BENCH_KEY, help="key to GET (written first)")
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--json", default=os.path.join(harness.OUT_DIR, "options_cost.json"))
    return ap.parse_args(argv)


def report(configs, ratios, cpu_ratios):
    headers = ["config", "req/s (median)", "min-max", "CPU µs/req", "p50 ms",
               "req/s vs off", "range", "CPU vs off", "range", "errors"]
    rows = []
    for c in configs:
        s = c.summary()
        rs, cs = ratios.get(c.name), cpu_ratios.get(c.name)
        rows.append([c.name, "%.0f" % s["rps"], "%.0f-%.0f" % (s["rps_min"], s["rps_max"]),
                     "%.1f" % s["cpu_us"] if s["cpu_us"] is not None else "",
                     "%.2f" % s["p50"] if s["p50"] is not None else "",
                     "%.3f" % median(rs) if rs else "1", "%.3f-%.3f" % (min(rs), max(rs))
                     if rs else "", "%.3f" % median(cs) if cs else "1",
                     "%.3f-%.3f" % (min(cs), max(cs)) if cs else "", s["errors"]])
    return table(headers, rows)


def main(argv=None):
    args = parse_args(argv)
    harness.stop_on_sigterm()
    if not shutil.which(args.wrk):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    target = Target(args.members, args.initial_cluster)
    procs, configs = [], []
    path = "/v2/keys/" + args.key
    try:
        target.start()
        target.put(args.key, "options")
        for name, extra in VARIANTS:
            proxy = start_ours(target.initial_cluster, proxy_args("native", 1) + extra,
                               len(target.members))
            procs.append(proxy)
            configs.append(Config(name, "ours", proxy.url, proxy.pid, args.connections))
            log("%s: pid %d on %s" % (name, proxy.pid, proxy.url))
        for cfg in configs:  # fill the upstream pools; not counted
            run_wrk(args, cfg.url, cfg.connections, 1, path)
        ratios = {c.name: [] for c in configs[1:]}  # same-round ratios to metrics off
        cpu_ratios = {c.name: [] for c in configs[1:]}
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for cfg in order:
                cfg.runs.append(measure(args, cfg, path))
            base = configs[0].runs[-1]
            for cfg in configs[1:]:
                ratios[cfg.name].append(cfg.runs[-1]["rps"] / base["rps"])
                cpu_ratios[cfg.name].append(cfg.runs[-1]["cpu_us"] / base["cpu_us"])
            log("[round %d/%d] %s" % (rnd + 1, args.rounds, "  ".join(
                "%s %.0f req/s %.1f µs" % (c.name, c.runs[-1]["rps"], c.runs[-1].get("cpu_us", 0))
                for c in configs)))
    finally:
        for p in reversed(procs):
            p.stop()
        target.close()
    print("wrk -t%d -c%d -d%ds --latency, GET %s; one proxy process each (native transport); "
          "%d rounds" % (args.threads, args.connections, args.duration, path, args.rounds))
    print("ratios: median over the rounds of this row / metrics off in the same round")
    print(report(configs, ratios, cpu_ratios))
    on = median(ratios["metrics on"])
    print()
    print("%-6s metrics on: %.3fx the req/s of metrics off, %.3fx its CPU per GET (target: "
          "req/s >= %.2fx)" % ("ok" if on >= TARGET_RATIO else "MISS", on,
                               median(cpu_ratios["metrics on"]), TARGET_RATIO))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rounds": args.rounds, "ratios": ratios, "cpu_ratios": cpu_ratios,
                   "configs": [dict(name=c.name, summary=c.summary(), runs=c.runs)
                               for c in configs]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
