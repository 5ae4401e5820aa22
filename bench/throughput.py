"""GET throughput, latency and proxy CPU per request: ours against the Go proxy.

Starts a local 3-member etcd cluster (or uses --members), writes one key, and
starts every proxy once: ``etcd --proxy on`` (Go) and ours for each transport
x workers asked for.  Then in rounds, one config after the other, runs the same
wrk command (GET of that key) against

* one member directly (the ceiling),
* the Go proxy,
* ours, per transport and worker count (and ``--proxy-balance``: ours spreads
  the clients over all members, the Go proxy sends everything to one, so on one
  machine ``first`` shows the proxies with the members doing the same work; and
  ``--proxy-pipeline``: 0 gives each request its own upstream connection),

with 10 % PUTs (``mixed.lua``) for Go and ours (workers 1), and with -c1
once more for direct, Go and ours (workers 1): the one-connection latency.  Per run it reads wrk's req/s, p50 and p99, and the proxy's CPU time
(utime+stime of its whole process tree from /proc, so gunicorn workers count)
divided by the requests wrk made, and the same for the local members together
("members µs/req": on one machine, what a proxy makes its members spend is CPU
the proxy does not get).  The table shows medians over rounds and each
config's ratios to the Go proxy: the median of the rounds' ratios, each the
config's figure over Go's in the same round (``paired``).

    .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --rounds 3 --transports requests --workers 1
    .venv/bin/python bench/throughput.py --rounds 0 --profile      # py-spy only
    .venv/bin/python bench/throughput.py --tls --transports native # TLS on both sides
    .venv/bin/python bench/throughput.py --balance least-connections,first  # + Go's member choice
    .venv/bin/python bench/throughput.py --pipeline 2,0  # with and without pipelined reads
    .venv/bin/python bench/throughput.py -c 1000 -t 2 --rounds 5 --transports native \
        --workers 1 --no-c1 --no-mixed                          # overload: every round judged

With ``--tls`` everything is https: the members' client and peer URLs, both
proxies' listeners (wrk speaks TLS to them) and their connections to the
members, with the same certificate flags for the Go proxy and ours (certs.py).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from statistics import median

import harness  # first of bench/'s modules: it makes geproxy importable
from harness import log
from certs import BenchTLS
from load import ForeignLoad
from proxies import GoProxy, pick_matrix, proxy_args, start_ours
from tables import table
from target import Target

from geproxy import settings
from geproxy.testing import wrk
from geproxy.testing.procfs import cpu_seconds

# The targets, as ratios to the Go proxy measured in the same run
TARGET_GET_RATIO = 1.3  # GET req/s at 50 connections, one process (stretch 1.5)
TARGET_MIXED_RATIO = 1.2  # the same with 10 % PUTs
TARGET_CPU_RATIO = 0.75  # proxy CPU per GET
TARGET_P50_RATIO = 0.9  # one-connection p50 latency
TARGET_TLS_RATIO = 1.0  # with --tls: any of ours vs Go at 50 connections
OVERLOAD_CONNECTIONS = 1000  # at or above: every round must match Go's req/s and p99, no errors
DEFAULT_BALANCE = next(s.default for s in settings.SETTINGS if s.name == "proxy-balance")
DEFAULT_PIPELINE = next(s.default for s in settings.SETTINGS if s.name == "proxy-pipeline")
DEFAULT_TRANSPORT = next(s.default for s in settings.SETTINGS if s.name == "proxy-transport")
WORKER_PAIRS = 12  # extra back-to-back runs of one and two workers (see worker_pairs)
PAIR_DURATION = 3  # seconds of wrk per run of those
MIXED_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mixed.lua")

def variant_suffix(balance, pipeline=DEFAULT_PIPELINE):
    """What a row's name adds for its --proxy-balance and --proxy-pipeline (nothing for
    the defaults)."""
    return (("" if balance == DEFAULT_BALANCE else " " + balance)
            + ("" if pipeline == DEFAULT_PIPELINE else " pipeline %s" % pipeline))


class Config:
    """One row: a target URL, whose CPU to count, and the wrk connection count."""

    def __init__(self, name, kind, url, pid, connections, transport=None, workers=None,
                 mixed=False, balance=None, pipeline=None):
        self.name, self.kind, self.url, self.pid = name, kind, url, pid
        self.connections, self.transport, self.workers = connections, transport, workers
        self.balance = balance  # ours: --proxy-balance
        self.pipeline = pipeline  # ours: --proxy-pipeline
        self.mixed = mixed  # 10 % PUTs (mixed.lua) instead of GETs only
        self.runs = []
        self.pairs = []  # two workers: req/s over one worker's in the extra pairs (worker_pairs)

    @property
    def row(self):
        """Which rows compare with each other: (connections, mixed)."""
        return self.connections, self.mixed

    def values(self, key):
        """This key's figures over the rounds, leaving out runs that have none."""
        return [r[key] for r in self.runs if r.get(key) is not None]

    def median(self, key):
        xs = self.values(key)
        return median(xs) if xs else None

    def summary(self):
        rps = self.values("rps")
        return {"rps": self.median("rps"), "rps_min": min(rps) if rps else None,
                "rps_max": max(rps) if rps else None, "p50": self.median("p50"),
                "p99": self.median("p99"), "cpu_us": self.median("cpu_us"),
                "members_us": self.median("members_us"),
                "other": self.median("other_cores"),
                "errors": sum(r["non2xx"] + r["socket_errors"] for r in self.runs)}


def run_wrk(args, url, connections, duration, path, mixed=False):
    cmd = [args.wrk, "-t%d" % min(args.threads, connections), "-c%d" % connections,
           "-d%ds" % duration, "--latency", "--timeout", "5s", url + path]
    if mixed:
        cmd[1:1] = ["-s", MIXED_SCRIPT]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    if proc.returncode != 0:
        raise RuntimeError("wrk failed (%d): %s" % (proc.returncode, proc.stderr.strip()))
    return wrk.parse(proc.stdout)


def measure(args, cfg, path, duration=None, members=()):
    """One wrk run against ``cfg``: wrk's figures, the proxy's CPU per request and the
    CPU the ``members`` (pids of the local cluster) spent per request meanwhile."""
    duration = duration or args.duration
    before = cpu_seconds(cfg.pid, descendants=True) if cfg.pid else None
    members_before = [cpu_seconds(pid) for pid in members]
    foreign = ForeignLoad()
    res = run_wrk(args, cfg.url, cfg.connections, duration, path, cfg.mixed)
    if before is not None and res["requests"]:
        res["cpu_us"] = ((cpu_seconds(cfg.pid, descendants=True) - before) * 1e6
                         / res["requests"])
    if members and res["requests"]:
        res["members_us"] = (sum(cpu_seconds(pid) for pid in members) - sum(members_before)
                             ) * 1e6 / res["requests"]
    res["other_cores"] = foreign.cores()
    return res


def worker_pairs(args, configs, path, members):
    """More rounds of just one and two workers of the default transport, back to back,
    for the one verdict that needs them: two workers against one.

    Why: that target is "no slower", so the verdict rests on a ratio near 1.0,
    and single rounds of it ranged 0.63x-1.80x on this machine (bench/README,
    "Two workers"); five rounds' median swung 0.99x-1.11x between runs on one
    day while 16-20 pairs in one run came to 1.05x-1.14x.  The pairs take turns
    at going first (one-two, two-one), so a steady drift over a pair favours
    neither.  Their ratios join the rounds' in ``Config.pairs``.  Not at
    ``OVERLOAD_CONNECTIONS``, where every round is judged on its own.
    """
    if args.worker_pairs <= 0:
        return
    pairs = {}
    for c in configs:
        if c.kind == "ours" and c.transport == DEFAULT_TRANSPORT and not c.mixed \
                and 1 < c.connections < OVERLOAD_CONNECTIONS and c.workers in (1, 2):
            pairs.setdefault((c.balance, c.pipeline), {})[c.workers] = c
    for by_count in pairs.values():
        if 1 not in by_count or 2 not in by_count:
            continue
        one, two = by_count[1], by_count[2]
        for n in range(args.worker_pairs):
            order = (one, two) if n % 2 == 0 else (two, one)
            runs = {}
            for cfg in order:
                runs[cfg.workers] = res = measure(args, cfg, path, PAIR_DURATION, members)
                log("[pair %d/%d] %-28s %7.0f req/s  CPU %4s µs/req"
                    % (n + 1, args.worker_pairs, cfg.name, res["rps"],
                       _fmt(res.get("cpu_us"), "%.0f") or "-"))
            if runs[1]["rps"] and runs[2]["rps"]:
                two.pairs.append(runs[2]["rps"] / runs[1]["rps"])


# --- setup --------------------------------------------------------------------------


def start_all(args, target, procs, tls=None):
    """Start the Go proxy and every one of ours (appended to procs as they start,
    so the caller stops them even if a later one fails); returns the configs.
    With ``tls`` (a BenchTLS) both are https on both sides."""
    n = len(target.members)
    direct = target.members[0]
    configs_c50, configs_c1 = [], []
    configs_c50.append(Config("direct (one member)", "direct", direct.client_url, None,
                              args.connections))
    configs_c1.append(Config("direct (one member)", "direct", direct.client_url, None, 1))
    go = GoProxy(target.initial_cluster, etcd_bin=args.etcd_bin, tls=tls)
    procs.append(go)
    go.start(endpoints=n)
    log("go proxy pid %d on %s" % (go.pid, go.url))
    configs_c50.append(Config("go (etcd --proxy on)", "go", go.url, go.pid, args.connections))
    configs_c1.append(Config("go (etcd --proxy on)", "go", go.url, go.pid, 1))
    configs_mixed = [] if args.no_mixed else [
        Config("go (etcd --proxy on), 10% PUT", "go", go.url, go.pid, args.connections,
               mixed=True)]
    balances = [b.strip() for b in args.balance.split(",") if b.strip()]
    pipelines = [p.strip() for p in args.pipeline.split(",") if p.strip()]
    for balance, pipeline in ((b, p) for b in balances for p in pipelines):
        for transport, workers in pick_matrix(args.transports, args.workers):
            flags = proxy_args(transport, workers, balance,
                               pipeline if transport == "native" else None)
            proxy = start_ours(target.initial_cluster, flags, n, tls)
            procs.append(proxy)
            name = "ours %s w%d%s" % (transport, workers, variant_suffix(balance, pipeline))
            log("%s pid %d on %s" % (name, proxy.pid, proxy.url))
            variant = {"balance": balance, "pipeline": pipeline}
            configs_c50.append(Config(name, "ours", proxy.url, proxy.pid, args.connections,
                                      transport, workers, **variant))
            if workers == 1:
                configs_c1.append(Config(name, "ours", proxy.url, proxy.pid, 1, transport,
                                         workers, **variant))
                if not args.no_mixed:
                    configs_mixed.append(Config(name + ", 10% PUT", "ours", proxy.url,
                                                proxy.pid, args.connections, transport,
                                                workers, mixed=True, **variant))
    return configs_c50 + (configs_mixed if len(configs_mixed) > 1 else []) + (
        configs_c1 if not args.no_c1 and args.connections != 1 else [])


# --- output -------------------------------------------------------------------------


def _fmt(x, spec):
    return "" if x is None else spec % x


def _ratio(go, c, key):
    """This row's figure over the Go proxy's, the median of the rounds' ratios
    (``paired``), formatted; empty when there is nothing to compare."""
    ratio = paired(go, c, key)[0] if go is not None else 0.0
    return "%.2f" % ratio if ratio else ""


def report(configs):
    go = {c.row: c for c in configs if c.kind == "go"}
    headers = ["config", "conns", "req/s (median)", "min-max", "p50 ms", "p99 ms",
               "CPU µs/req", "members µs/req", "req/s vs Go", "CPU vs Go", "p50 vs Go",
               "errors", "other load"]
    rows = []
    for c in configs:
        s, g = c.summary(), go.get(c.row)
        rows.append([c.name, c.connections, _fmt(s["rps"], "%.0f"),
                     "%s-%s" % (_fmt(s["rps_min"], "%.0f"), _fmt(s["rps_max"], "%.0f")),
                     _fmt(s["p50"], "%.2f"), _fmt(s["p99"], "%.2f"),
                     _fmt(s["cpu_us"], "%.0f") if c.kind != "direct" else "-",
                     _fmt(s["members_us"], "%.0f"),
                     _ratio(g, c, "rps"),
                     _ratio(g, c, "cpu_us") if c.kind != "direct" else "",
                     _ratio(g, c, "p50"), s["errors"], _fmt(s["other"], "%.2f")])
    return table(headers, rows)


def paired(a, b, key="rps", extra=()):
    """(the median, every ratio sorted) of B's figure over A's, round by round, and
    ``extra`` ratios measured apart (``worker_pairs``): two configs compared with
    each other (0.0 and [] if there is none).

    Why not the ratio of their medians: on this shared machine the CPU a request
    costs drifts by up to 1.8x over tens of seconds (bench/README, "Two workers"),
    and two rows' medians can come from different phases; a round's two runs,
    seconds apart, see the same phase."""
    ratios = sorted([y[key] / x[key] for x, y in zip(a.runs, b.runs)
                     if x.get(key) and y.get(key)] + list(extra))
    return (median(ratios) if ratios else 0.0), ratios


def _rounds(ratios, what="rounds'"):
    """How a paired ratio came about, for a verdict line."""
    return "the median of %d %s ratios (%s)" % (
        len(ratios), what, " ".join("%.2f" % r for r in ratios))


def _verdict(ok, text, judged=True):
    """A target's line: ok or MISS, or ``info`` for a row the target is not set for."""
    return "%-6s %s" % (("ok" if ok else "MISS") if judged else "info", text)


def verdicts(configs, connections, tls=False):
    """One line per target the run can judge, each with the figures it was judged on:
    ratios to the Go proxy, and of two workers to one, round by round (``paired``)."""
    go = {c.row: c for c in configs if c.kind == "go"}
    ours = [c for c in configs if c.kind == "ours"]
    lines = []
    by_workers = {}
    for c in ours:
        s, g = c.summary(), go.get(c.row)
        if not s["rps"] or g is None or not g.median("rps"):
            continue
        r, rs = paired(g, c)
        judged = c.transport == DEFAULT_TRANSPORT  # the targets are the default data plane's
        if c.connections == 1:
            p, ps = paired(g, c, "p50")
            lines.append(_verdict(p <= TARGET_P50_RATIO, "one-connection p50, %s: %.2fx Go's, "
                                  "%s; medians %.3f vs %.3f ms (target <= %.2fx)" % (
                                      c.name, p, _rounds(ps), s["p50"], g.median("p50"),
                                      TARGET_P50_RATIO), judged))
        elif c.mixed:
            lines.append(_verdict(r >= TARGET_MIXED_RATIO, "req/s with 10%% PUT at %d conns, "
                                  "%s: %.2fx Go, %s (target >= %.1fx)" % (
                                      connections, c.name, r, _rounds(rs),
                                      TARGET_MIXED_RATIO), judged))
        elif tls:
            lines.append(_verdict(r >= TARGET_TLS_RATIO, "req/s over TLS at %d conns, %s: "
                                  "%.2fx Go, %s (target >= %.1fx)" % (
                                      connections, c.name, r, _rounds(rs), TARGET_TLS_RATIO),
                                  judged))
        elif connections >= OVERLOAD_CONNECTIONS:
            for n, (run, go_run) in enumerate(zip(c.runs, g.runs)):
                errors = run["non2xx"] + run["socket_errors"]
                lines.append(_verdict(
                    run["rps"] >= go_run["rps"] and run["p99"] <= go_run["p99"] and not errors,
                    "round %d at %d conns, %s: %.2fx Go's req/s, p99 %.1f ms vs Go %.1f ms, "
                    "%d errors (target: >= 1.0x, p99 <= Go's, no errors)" % (
                        n + 1, connections, c.name, run["rps"] / go_run["rps"], run["p99"],
                        go_run["p99"], errors)))
        else:
            if c.workers == 1:
                lines.append(_verdict(r >= TARGET_GET_RATIO, "GET req/s at %d conns, %s: "
                                      "%.2fx Go, %s; medians %.0f vs %.0f req/s (target >= "
                                      "%.1fx, stretch 1.5x)" % (
                                          connections, c.name, r, _rounds(rs), s["rps"],
                                          g.median("rps"), TARGET_GET_RATIO), judged))
            by_workers.setdefault((c.transport, c.balance, c.pipeline), {})[c.workers] = c
            cr, crs = paired(g, c, "cpu_us")
            if cr and c.workers == 1:
                lines.append(_verdict(cr <= TARGET_CPU_RATIO, "CPU per GET, %s: %.2fx Go's, "
                                      "%s; medians %.0f vs %.0f µs (target <= %.2fx)" % (
                                          c.name, cr, _rounds(crs), s["cpu_us"],
                                          g.median("cpu_us"), TARGET_CPU_RATIO), judged))
    for (transport, balance, pipeline), by_count in by_workers.items():
        if 1 in by_count and 2 in by_count:
            one, two = by_count[1], by_count[2]
            ratio, ratios = paired(one, two, extra=two.pairs)
            lines.append(_verdict(ratio >= 1, "--workers 2 against 1, %s%s: %.2fx, %s, %d of "
                                  "them at or above 1.0 (%d rounds, %d extra pairs); medians "
                                  "%.0f vs %.0f req/s in the rounds (target: no slower)" % (
                                      transport, variant_suffix(balance, pipeline), ratio,
                                      _rounds(ratios, "pairs'"), sum(r >= 1 for r in ratios),
                                      len(ratios) - len(two.pairs), len(two.pairs),
                                      two.median("rps"), one.median("rps"))))
    return "\n".join(lines)


# --- profiling ----------------------------------------------------------------------


def _frame_key(frame):
    """'func (/long/path/file.py:123)' -> 'func (pkg/file.py)': lines merged, paths short."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif re.search(r"/lib/python3\.\d+/", path):
        path = "stdlib/" + re.split(r"/lib/python3\.\d+/", path, 1)[1]
    elif path.startswith(harness.ROOT + "/"):
        path = path[len(harness.ROOT) + 1:]
    return "%s (%s)" % (func, path)


def analyse_raw(path, top=25):
    """Top functions by self and by inclusive samples from py-spy's raw (collapsed) output."""
    self_c, incl_c, files = Counter(), Counter(), Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            count = int(count)
            frames = [fr for fr in stack.split(";")
                      if not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            keys = [_frame_key(fr) for fr in frames]
            self_c[keys[-1]] += count
            files[keys[-1].rsplit("(", 1)[1].rstrip(")")] += count
            for k in set(keys):
                incl_c[k] += count
    out = ["py-spy samples: %d (non-idle)" % total, "", "Top functions by self time:"]
    out += ["  %5.1f %%  %s" % (100.0 * c / total, k) for k, c in self_c.most_common(top)]
    out += ["", "Self time by file:"]
    out += ["  %5.1f %%  %s" % (100.0 * c / total, k) for k, c in files.most_common(top)]
    out += ["", "Inclusive time, geproxy and request-path functions:"]
    wanted = ("geproxy/", "pywsgi.py", "requests/", "urllib3/", "feedparser", "http/client",
              "client.py", "response.py")
    incl = [(k, c) for k, c in incl_c.most_common() if any(w in k for w in wanted)]
    out += ["  %5.1f %%  %s" % (100.0 * c / total, k) for k, c in incl[:top * 2]]
    return "\n".join(out)


def profile(args, configs, path):
    pyspy = args.py_spy or shutil.which("py-spy") or os.path.join(
        os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        log("profile: py-spy not found (pip install py-spy into the venv); skipped")
        return None
    cands = [c for c in configs if c.kind == "ours" and c.connections == args.connections
             and (args.profile == "auto" or c.name == args.profile)]
    if not cands:
        log("profile: no config named %r; have: %s" % (
            args.profile, ", ".join(c.name for c in configs if c.kind == "ours")))
        return None
    cfg = cands[0]
    os.makedirs(harness.OUT_DIR, exist_ok=True)
    svg = os.path.join(harness.OUT_DIR, "profile.svg")
    raw = os.path.join(harness.OUT_DIR, "profile.txt")
    d = args.profile_duration
    log("profile: %s (pid %d): wrk -c%d for %ds, py-spy record %ds svg then %ds raw"
        % (cfg.name, cfg.pid, cfg.connections, 2 * d + 3, d, d))
    cmd = [args.wrk, "-t%d" % args.threads, "-c%d" % cfg.connections, "-d%ds" % (2 * d + 3),
           "--latency", cfg.url + path]
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        for fmt, out in (("flamegraph", svg), ("raw", raw)):
            subprocess.run([pyspy, "record", "--pid", str(cfg.pid), "--duration", str(d),
                            "--rate", "200", "--nonblocking", "--subprocesses",
                            "--format", fmt, "--output", out],
                           capture_output=True, timeout=d + 60, check=True)
        wrk_out, _ = load.communicate(timeout=2 * d + 40)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
    text = analyse_raw(raw)
    res = wrk.parse(wrk_out)
    text = ("Profiled %s under wrk -c%d (%s req/s while sampled)\n\n%s"
            % (cfg.name, cfg.connections, _fmt(res["rps"], "%.0f"), text))
    with open(os.path.join(harness.OUT_DIR, "profile-top.txt"), "w") as f:
        f.write(text + "\n")
    log("profile: %s, %s, bench/out/profile-top.txt" % (os.path.relpath(svg),
                                                        os.path.relpath(raw)))
    return text


# --- main ---------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all configs (default 5)")
    ap.add_argument("--threads", "-t", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--connections", "-c", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--duration", "-d", type=int, default=5,
                    help="wrk -d in seconds (default 5)")
    ap.add_argument("--transports", default="native,requests",
                    help="our --proxy-transport values (default native,requests; "
                    "ones this checkout lacks are skipped)")
    ap.add_argument("--workers", default="1,2", help="our --workers values (default 1,2)")
    ap.add_argument("--balance", default=DEFAULT_BALANCE,
                    help="our --proxy-balance values, comma-separated (default %s; 'first' "
                         "sends everything to one member, as the Go proxy does, so the members "
                         "do the same work as behind Go)" % DEFAULT_BALANCE)
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                    help="our --proxy-pipeline values, comma-separated (default %s; 0 gives "
                         "every request its own upstream connection)" % DEFAULT_PIPELINE)
    ap.add_argument("--worker-pairs", type=int, default=WORKER_PAIRS,
                    help="after the rounds, this many more runs of one and two workers "
                    "(default transport) back to back, %ds each, for the two-worker verdict "
                    "(default %d)" % (PAIR_DURATION, WORKER_PAIRS))
    ap.add_argument("--no-c1", action="store_true", help="skip the one-connection rows")
    ap.add_argument("--no-mixed", action="store_true", help="skip the rows with 10%% PUTs")
    ap.add_argument("--members", help="client URLs of existing members, comma-separated "
                    "(default: start a local 3-member etcd cluster); the first is 'direct'")
    ap.add_argument("--initial-cluster", help="name=peerURL,... for the proxies "
                    "(with --members)")
    ap.add_argument("--key", default=harness.BENCH_KEY, help="key to GET (written first)")
    ap.add_argument("--profile", nargs="?", const="auto", default=None, metavar="CONFIG",
                    help="after the rounds, run py-spy on one of ours under wrk "
                    "(default: the first of ours) -> bench/out/profile.svg, profile.txt")
    ap.add_argument("--profile-duration", type=int, default=10)
    ap.add_argument("--py-spy", default=None, help="py-spy binary (default: on PATH or venv)")
    ap.add_argument("--tls", action="store_true",
                    help="https everywhere: members, both proxies' listeners and their "
                    "connections to the members (certificates from certs.py)")
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--etcd-bin", default="etcd")
    ap.add_argument("--json", default=os.path.join(harness.OUT_DIR, "throughput.json"))
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    harness.stop_on_sigterm()
    if not shutil.which(args.wrk):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    tls = BenchTLS() if args.tls else None
    target = Target(args.members, args.initial_cluster,
                    tls=tls.cluster if tls is not None else None)
    procs, configs, prof = [], [], None
    path = "/v2/keys/" + args.key
    try:
        target.start()
        target.put(args.key, "throughput")
        configs = start_all(args, target, procs, tls)
        for cfg in configs:  # fill the proxies' upstream pools; not counted
            run_wrk(args, cfg.url, cfg.connections, 1, path, cfg.mixed)
        members = [m.pid for m in target.members if m.pid]
        total = args.rounds * len(configs) * args.duration
        log("%d configs x %d rounds x %ds = about %ds of wrk"
            % (len(configs), args.rounds, args.duration, total))
        for rnd in range(args.rounds):
            for i, cfg in enumerate(configs):
                res = measure(args, cfg, path, members=members)
                cfg.runs.append(res)
                log("[round %d/%d %2d/%d] %-28s c%-3d %7s req/s  p50 %6s ms  p99 %6s ms  "
                    "CPU %4s µs/req  other load %.2f%s"
                    % (rnd + 1, args.rounds, i + 1, len(configs), cfg.name, cfg.connections,
                       _fmt(res["rps"], "%.0f"), _fmt(res["p50"], "%.2f"),
                       _fmt(res["p99"], "%.2f"), _fmt(res.get("cpu_us"), "%.0f") or "-",
                       res["other_cores"],
                       "  errors %d" % (res["non2xx"] + res["socket_errors"])
                       if res["non2xx"] + res["socket_errors"] else ""))
        worker_pairs(args, configs, path, members)
        if args.profile:
            prof = profile(args, configs, path)
    finally:
        for p in reversed(procs):
            p.stop()
        target.close()
        if tls is not None:
            shutil.rmtree(tls.dir, ignore_errors=True)
    if args.rounds:
        print("wrk -t%d -c%d -d%ds --latency, GET %s%s; medians over %d rounds"
              % (args.threads, args.connections, args.duration, path,
                 " (TLS: client -> proxy https, proxy -> members https)" if tls else "",
                 args.rounds))
        print(report(configs))
        print()
        print(verdicts(configs, args.connections, tls is not None))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"wrk": {"threads": args.threads, "connections": args.connections,
                               "duration": args.duration}, "rounds": args.rounds,
                       "tls": tls is not None,
                       "configs": [dict(name=c.name, kind=c.kind, connections=c.connections,
                                        summary=c.summary(), runs=c.runs) for c in configs]},
                      f, indent=1)
    if prof:
        print()
        print(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
