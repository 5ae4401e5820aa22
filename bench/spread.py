"""How evenly one proxy spreads client connections and requests over the members.

Starts a local 3-member etcd cluster (or uses --members), then for each proxy
configuration: starts the proxy, opens K keep-alive client connections at once
(gevent greenlets on raw sockets, in this process), lets each make M GETs of
one key, and counts per member

* requests, from the members' own /metrics: etcd_http_received_total summed
  over methods, the delta over the run;
* upstream connections, from the kernel: established TCP connections from the
  proxy's process tree to each member's client port, at the end of the run
  (all client connections still open) and the peak seen while it ran.

Rows: ours for each transport x workers asked for (least-connections balance),
ours with ``--proxy-balance first`` (the Go proxy's choice), and with
--compare-go ``etcd --proxy on`` itself.  Prints a table and writes a bar chart
(bench/out/spread.png).

    .venv/bin/python bench/spread.py --compare-go
"""

import argparse
import json
import os
import socket
import sys
import time
from collections import Counter

import gevent
from gevent import socket as gsocket
from gevent.event import Event

import harness  # first of bench/'s modules: it makes geproxy importable
from harness import log
from proxies import GoProxy, pick_matrix, proxy_args, start_ours
from stats import jain, max_min
from tables import table
from target import Target

from geproxy.resources import raise_open_files_limit
from geproxy.testing.procfs import established
from geproxy.testing.rawhttp import Reader

TARGET_TOLERANCE = 3.0  # percentage points around 100/n
TARGET_JAIN = 0.98


# --- the load -----------------------------------------------------------------------


def run_load(url, pid, ports, connections, requests, path, timeout):
    """K connections, opened together, each making M GETs; samples upstream connections.

    Returns a dict with statuses, errors, seconds and the upstream connection
    counts per member (peak during the run, and at its end while every client
    connection is still open).
    """
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, host, port)).encode()
    state = {"connected": 0, "done": 0}
    all_connected, go, all_done, release = Event(), Event(), Event(), Event()
    statuses, errors = Counter(), []

    def client():
        sock = None
        try:
            try:
                sock = gsocket.create_connection((host, port), timeout=10.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                errors.append("connect: %r" % exc)
            finally:
                state["connected"] += 1
                if state["connected"] == connections:
                    all_connected.set()
            go.wait()
            try:
                reader = Reader(sock)
                for _ in range(requests if sock is not None else 0):
                    sock.sendall(request)
                    statuses[reader.response()[0]] += 1
            except (OSError, ValueError, EOFError) as exc:
                errors.append(repr(exc))
            finally:
                state["done"] += 1
                if state["done"] == connections:
                    all_done.set()
            release.wait()  # keep the connection open until the sample is taken
        finally:
            if sock is not None:
                sock.close()

    peak = [0] * len(ports)

    def sampler():
        while not release.is_set():
            now = established(pid, ports)
            for i, n in enumerate(now):
                peak[i] = max(peak[i], n)
            gevent.sleep(0.2)

    greenlets = [gevent.spawn(client) for _ in range(connections)]
    try:
        if not all_connected.wait(timeout):
            raise RuntimeError("only %d of %d connections made within %ss"
                               % (state["connected"], connections, timeout))
        watcher = gevent.spawn(sampler)
        t0 = time.monotonic()
        go.set()
        if not all_done.wait(timeout):
            raise RuntimeError("only %d of %d connections finished within %ss"
                               % (state["done"], connections, timeout))
        seconds = time.monotonic() - t0
        end = established(pid, ports)
        release.set()
        watcher.join(timeout=5)
    finally:
        go.set()
        release.set()
        gevent.joinall(greenlets, timeout=10)
        gevent.killall([g for g in greenlets if not g.dead], block=False)
    return {"statuses": dict(statuses), "errors": errors, "seconds": seconds,
            "conns_end": end, "conns_peak": [max(p, e) for p, e in zip(peak, end)]}


# --- one configuration ----------------------------------------------------------------


def measure(label, kind, proxy, target, args):
    ports = target.ports()
    before = target.received()
    res = run_load(proxy.url, proxy.pid, ports, args.connections, args.requests,
                   "/v2/keys/" + args.key, args.timeout)
    after = target.received()  # etcd counts a request as it arrives: all are in
    res["requests"] = [int(a - b) for a, b in zip(after, before)]
    res["label"], res["kind"] = label, kind
    sent = args.connections * args.requests
    ok = res["statuses"].get(200, 0)
    log("%-34s %s  (%d/%d ok in %.1fs%s)"
        % (label, " ".join("%5.1f%%" % s for s in shares(res["requests"])), ok, sent,
           res["seconds"], ", %d errors: %s" % (len(res["errors"]), res["errors"][0])
           if res["errors"] else ""))
    return res


def shares(xs):
    total = sum(xs)
    return [100.0 * x / total if total else 0.0 for x in xs]


def configs(args, initial_cluster):
    """(label, kind, start()) for every row, in table order."""
    out = []
    matrix = pick_matrix(args.transports, args.workers)
    for transport, workers in matrix:
        out.append(("ours %s w%d" % (transport, workers), "ours",
                    lambda t=transport, w=workers: start_ours(
                        initial_cluster, proxy_args(t, w), len(args.member_ports))))
    if not args.no_first:
        transport = matrix[0][0]
        out.append(("ours %s w1 --proxy-balance first" % transport, "ours-first",
                    lambda: start_ours(initial_cluster, proxy_args(transport, 1, "first"),
                                       len(args.member_ports))))
    if args.compare_go:
        out.append(("go (etcd --proxy on)", "go",
                    lambda: GoProxy(initial_cluster, etcd_bin=args.etcd_bin).start(
                        endpoints=len(args.member_ports))))
    return out


# --- output ---------------------------------------------------------------------------


def verdict(res, n):
    if res["kind"] != "ours":
        return ""
    s = shares(res["requests"])
    even = all(abs(x - 100.0 / n) <= TARGET_TOLERANCE for x in s)
    return "ok" if even and jain(res["requests"]) >= TARGET_JAIN else "MISS"


def report(results, target):
    n = len(target.members)
    names = ["%s :%d" % (m.name, p) for m, p in zip(target.members, target.ports())]
    headers = (["config"] + ["req %s" % nm for nm in names]
               + ["max/min", "Jain", "upstream conns end (peak)", "conns Jain", "ok/sent",
                  "req/s", "target"])
    rows = []
    for r in results:
        s = shares(r["requests"])
        mm = max_min(r["requests"])
        rows.append(
            [r["label"]]
            + ["%.1f %% (%d)" % (x, c) for x, c in zip(s, r["requests"])]
            + ["inf" if mm == float("inf") else "%.2f" % mm,
               "%.3f" % jain(r["requests"]),
               " / ".join("%d (%d)" % (e, p) for e, p in zip(r["conns_end"], r["conns_peak"])),
               "%.3f" % jain(r["conns_end"]),
               "%d/%d" % (r["statuses"].get(200, 0), r["sent"]),
               "%.0f" % (r["sent"] / r["seconds"]) if r["seconds"] else "",
               verdict(r, n)])
    return table(headers, rows)


def chart(results, target, path, connections, requests):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(target.members)
    names = ["%s\n:%d" % (m.name, p) for m, p in zip(target.members, target.ports())]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.8))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(n)]
        bars = ax1.bar(xs, shares(r["requests"]), width, label=r["label"])
        ax1.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        bars = ax2.bar(xs, r["conns_end"], width, label=r["label"])
        ax2.bar_label(bars, fontsize=7, padding=1)
    ax1.axhline(100.0 / n, color="grey", linestyle="--", linewidth=1)
    ax1.axhspan(100.0 / n - TARGET_TOLERANCE, 100.0 / n + TARGET_TOLERANCE, color="grey",
                alpha=0.15, label="target %.0f %% ± %.0f" % (100.0 / n, TARGET_TOLERANCE))
    for ax, title, ylabel in (
            (ax1, "Requests per member (etcd_http_received_total)", "share of requests, %"),
            (ax2, "Proxy's upstream TCP connections per member", "established connections")):
        ax.set_xticks(range(n), names)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    ax1.set_ylim(0, 112)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8,
               frameon=False)
    fig.suptitle("Spread over %d members: %d keep-alive client connections x %d GETs each"
                 % (n, connections, requests), fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", "-k", type=int, default=300,
                    help="client connections, all open at once (default 300)")
    ap.add_argument("--requests", "-m", type=int, default=20,
                    help="GETs per connection, keep-alive (default 20)")
    ap.add_argument("--members", help="client URLs of existing members, comma-separated "
                    "(default: start a local 3-member etcd cluster)")
    ap.add_argument("--initial-cluster", help="name=peerURL,... for the proxies "
                    "(with --members)")
    ap.add_argument("--compare-go", action="store_true",
                    help="also measure `etcd --proxy on` (the Go proxy)")
    ap.add_argument("--transports", default="",
                    help="our --proxy-transport values, comma-separated "
                    "(default: the proxy's default)")
    ap.add_argument("--workers", default="1,2",
                    help="our --workers values, comma-separated (default 1,2; values >1 "
                    "are skipped while --workers has not landed)")
    ap.add_argument("--no-first", action="store_true",
                    help="skip the --proxy-balance first row")
    ap.add_argument("--key", default=harness.BENCH_KEY, help="key to GET (written first)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="bound in seconds for each phase of one run (default 120)")
    ap.add_argument("--chart", default=os.path.join(harness.OUT_DIR, "spread.png"),
                    help="PNG to write (default bench/out/spread.png)")
    ap.add_argument("--json", default=os.path.join(harness.OUT_DIR, "spread.json"),
                    help="raw results (default bench/out/spread.json)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when one of our least-connections rows misses the target")
    ap.add_argument("--etcd-bin", default="etcd")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    harness.stop_on_sigterm()
    raise_open_files_limit()  # K client sockets in this one process
    target = Target(args.members, args.initial_cluster)
    results = []
    try:
        target.start()
        args.member_ports = target.ports()
        target.put(args.key, "spread")
        for label, kind, start in configs(args, target.initial_cluster):
            proxy = start()
            try:
                res = measure(label, kind, proxy, target, args)
            finally:
                proxy.stop()
            res["sent"] = args.connections * args.requests
            results.append(res)
    finally:
        target.close()
    print(report(results, target))
    chart(results, target, args.chart, args.connections, args.requests)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"connections": args.connections, "requests": args.requests,
                   "members": [m.client_url for m in target.members], "results": results},
                  f, indent=1)
    log("chart: %s" % os.path.relpath(args.chart))
    missed = [r["label"] for r in results if verdict(r, len(target.members)) == "MISS"]
    print()
    print("target for ours (least-connections): every member %.1f %% +- %.0f, Jain >= %.2f: %s"
          % (100.0 / len(target.members), TARGET_TOLERANCE, TARGET_JAIN,
             "missed by " + ", ".join(missed) if missed else "met by every row"))
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
