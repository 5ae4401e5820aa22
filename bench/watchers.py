"""Many one-shot watchers through one proxy: memory, upstream cost, delivery time.

Starts a local 3-member etcd cluster, then for each scenario and proxy:

1. starts the proxy (ours, one process; with --compare-go also ``etcd --proxy on``);
2. opens N watcher connections from this process (raw gevent sockets, cheap),
   each sending ``GET /v2/keys/<k>?wait=true HTTP/1.1``, and waits until every
   watch is established: its response headers arrived (ours flushes them at
   once) or the members count one watcher per client (the Go proxy sends its
   headers only with the event);
3. measures, with all watches waiting: the proxy's RSS (VmRSS of its process
   and any children, summed), its established connections to the members'
   client ports (from the kernel's socket table) and the members' watchers
   (``etcd_debugging_store_watchers`` summed over the members, minus the
   count before);
4. makes one PUT per key, straight to a member, and records for every watcher
   the time from its key's PUT until its whole event had arrived: the kernel's
   receive timestamp (SO_TIMESTAMPNS) of the data that completed the event, so
   that this process being busy reading ten thousand sockets is not counted.

Scenarios: N watchers on one key, and N watchers spread over K keys.
``--no-coalesce`` instead starts ours with ``--proxy-coalesce-watches=false``
and puts the N watchers on N distinct keys.

    .venv/bin/python bench/watchers.py --compare-go
    .venv/bin/python bench/watchers.py --compare-go --no-coalesce

Everything listens on 127.0.0.1.  The whole run is bounded (--deadline); every
process started here is stopped by pid at the end, also on Ctrl-C.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

import gevent  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

import harness  # noqa: E402  (first of bench/'s modules: it makes geproxy importable)
from harness import log  # noqa: E402
from proxies import GoProxy, proxy_args, start_ours  # noqa: E402
from geproxy.testing.rawhttp import Reader  # noqa: E402
from stats import percentile  # noqa: E402
from tables import table  # noqa: E402
from target import Target  # noqa: E402

from geproxy.resources import raise_open_files_limit  # noqa: E402
from geproxy.testing import settled_store_watchers, store_watchers  # noqa: E402
from geproxy.testing.procfs import established, rss_bytes  # noqa: E402

CONNECT_CONCURRENCY = 256  # watcher connections being opened at once
PUT_CONNECTIONS = 16  # keep-alive connections the PUTs are spread over
SO_TIMESTAMPNS = 35  # Linux; also the control message type (SCM_TIMESTAMPNS)


class Deadline(Exception):
    """The run's time is up: report what was measured, then clean up."""


class Clock:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, cap=None):
        left = self.end - time.monotonic()
        if left <= 0:
            raise Deadline()
        return left if cap is None else min(cap, left)


# --- raw HTTP on gevent sockets -------------------------------------------------------


class StampedSocket:
    """A socket whose ``recv`` notes the kernel's receive time of what it returns."""

    __slots__ = ("sock", "stamp")

    def __init__(self, sock):
        self.sock = sock
        self.stamp = None
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def recv(self, n):
        data, ancillary, _flags, _addr = self.sock.recvmsg(n, 64)
        self.stamp = time.time()
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack("qq", cdata[:16])
                self.stamp = sec + nsec / 1e9
        return data


class Watcher:
    __slots__ = ("key", "sock", "state", "done_at", "error")

    def __init__(self, key):
        self.key = key
        self.sock = None
        self.state = "new"  # new, sent, head, done, error
        self.done_at = None
        self.error = None


def run_watcher(w, host, port, gate, counts):
    request = ("GET /v2/keys/%s?wait=true HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
               % (w.key, host, port)).encode()
    try:
        with gate:
            w.sock = socket.create_connection((host, port), timeout=None)
            w.sock.sendall(request)
        w.state = "sent"
        counts["sent"] += 1
        stamped = StampedSocket(w.sock)
        reader = Reader(stamped)
        status, headers = reader.head()
        if status == 200:
            w.state = "head"
            counts["head"] += 1
        body = reader.body(dict(headers))
        w.done_at = stamped.stamp
        event = json.loads(body) if status == 200 else None
        if event is None or event.get("node", {}).get("key") != "/" + w.key:
            raise ValueError("status %s, body %r" % (status, body[:120]))
        w.state = "done"
        counts["done"] += 1
    except (OSError, EOFError, ValueError) as exc:
        w.state = "error"
        w.error = "%s: %s" % (type(exc).__name__, exc)
        counts["error"] += 1


def put_all(member_url, keys, started):
    """One PUT per key over a few keep-alive connections; records each send time."""
    parts = urllib.parse.urlsplit(member_url)
    queue = list(keys)
    errors = []

    def worker():
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        reader = Reader(sock)
        try:
            while queue:
                key = queue.pop()
                body = b"value=v"
                request = ("PUT /v2/keys/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                           "application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
                           % (key, parts.netloc, len(body))).encode() + body
                started[key] = time.time()  # the clock of the receive timestamps
                sock.sendall(request)
                status = reader.response("PUT")[0]
                if status not in (200, 201):
                    errors.append("PUT %s: %s" % (key, status))
        finally:
            sock.close()

    gevent.joinall([gevent.spawn(worker) for _ in range(min(PUT_CONNECTIONS, len(keys)))],
                   raise_error=True)
    return errors


# --- measurements ----------------------------------------------------------------------


def rss_mb(pid):
    """VmRSS of pid and its live descendants (all worker processes), in MB."""
    return rss_bytes(pid, descendants=True) / 2.0 ** 20


# --- one run -----------------------------------------------------------------------------


def run(label, proxy, members, keys_of_watchers, clock, args):
    """Watchers through ``proxy``; returns one result row (a dict)."""
    host, port = "127.0.0.1", int(proxy.url.rsplit(":", 1)[1])
    ports = [urllib.parse.urlsplit(m.client_url).port for m in members]
    n = len(keys_of_watchers)
    keys = sorted(set(keys_of_watchers))
    row = {"label": label, "watchers": n, "keys": len(keys)}
    base = settled_store_watchers(members, clock.left(30.0), interval=0.1)
    row["rss_idle"] = rss_mb(proxy.pid)
    counts = {"sent": 0, "head": 0, "done": 0, "error": 0}
    watchers = [Watcher(k) for k in keys_of_watchers]
    gate = BoundedSemaphore(CONNECT_CONCURRENCY)
    t0 = time.monotonic()
    greenlets = [gevent.spawn(run_watcher, w, host, port, gate, counts) for w in watchers]
    try:
        # established: headers seen, or (Go) the members count a watcher per client
        upstream_now = 0
        next_note = 0.0
        while True:
            settled = counts["head"] + counts["done"] + counts["error"]
            if settled >= n or (counts["sent"] + counts["error"] >= n
                                and upstream_now >= n - counts["error"]):
                break
            if time.monotonic() - t0 > clock.left(args.setup_timeout):
                log("  %s: not all watches established within %.0fs" % (label, args.setup_timeout))
                break
            gevent.sleep(0.2)
            upstream_now = store_watchers(members) - base
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + 2.0
                log("  %s: sent %d/%d, headers %d, errors %d, member watchers %d, rss %.0f MB"
                    % (label, counts["sent"], n, counts["head"], counts["error"], upstream_now,
                       rss_mb(proxy.pid)))
        row["setup_s"] = time.monotonic() - t0
        row["early"] = counts["done"] + counts["error"]  # answered before any PUT
        gevent.sleep(0.5)  # let the last joins land before sampling (a measurement pause)
        row["rss"] = rss_mb(proxy.pid)
        row["upstream_conns"] = sum(established(proxy.pid, ports))
        row["member_watchers"] = store_watchers(members) - base
        log("  %s: established in %.1fs; rss %.0f MB, upstream connections %d, member "
            "watchers %d; PUT to %d keys" % (label, row["setup_s"], row["rss"],
                                             row["upstream_conns"], row["member_watchers"],
                                             len(keys)))
        put_at = {}
        errors = put_all(members[0].client_url, keys, put_at)
        if errors:
            log("  %s: %d PUTs failed, first: %s" % (label, len(errors), errors[0]))
        wait_end = time.monotonic() + clock.left(args.event_timeout)
        next_note = 0.0
        while counts["done"] + counts["error"] < n and time.monotonic() < wait_end:
            gevent.sleep(0.1)
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + 2.0
                log("  %s: delivered %d/%d, errors %d" % (label, counts["done"], n,
                                                          counts["error"]))
        lat = sorted((w.done_at - put_at[w.key]) * 1000.0 for w in watchers
                     if w.state == "done" and w.key in put_at)
        row["delivered"] = counts["done"]
        row["errors"] = counts["error"]
        row["p50"], row["p99"] = percentile(lat, 0.50), percentile(lat, 0.99)
        row["max"] = lat[-1] if lat else None
        failed = [w for w in watchers if w.state == "error"]
        if failed:
            row["first_error"] = failed[0].error
            log("  %s: %d watchers failed, first: %s" % (label, len(failed), failed[0].error))
        return row
    finally:
        gevent.killall(greenlets, block=True, timeout=10)
        for w in watchers:
            if w.sock is not None:
                w.sock.close()


def fmt(x, spec="%.0f"):
    return "-" if x is None else spec % x


def print_table(rows):
    headers = ["proxy", "scenario", "watchers", "delivered", "upstream conns",
               "member watchers", "RSS MB idle", "RSS MB loaded", "p50 ms", "p99 ms",
               "max ms", "setup s"]
    body = []
    for r in rows:
        body.append([r["label"], r["scenario"], r["watchers"], r.get("delivered", "-"),
                     r.get("upstream_conns", "-"), r.get("member_watchers", "-"),
                     fmt(r.get("rss_idle")), fmt(r.get("rss")), fmt(r.get("p50"), "%.1f"),
                     fmt(r.get("p99"), "%.1f"), fmt(r.get("max"), "%.1f"),
                     fmt(r.get("setup_s"), "%.1f")])
    print(table(headers, body, ["l", "l"] + ["r"] * (len(headers) - 2)))
    sys.stdout.flush()


# --- main ----------------------------------------------------------------------------------


def scenarios(args):
    """(name, key of each watcher, our extra flags)."""
    n = args.watchers
    if args.no_coalesce:
        return [("%d keys, no coalescing" % n, ["bench/w/k%d" % i for i in range(n)],
                 ["--proxy-coalesce-watches=false"])]
    out = []
    if "one" in args.scenarios:
        out.append(("1 key", ["bench/w/one"] * n, []))
    if "spread" in args.scenarios:
        out.append(("%d keys" % args.keys, ["bench/w/k%d" % (i % args.keys) for i in range(n)],
                    []))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watchers", type=int, default=10000, help="N watcher connections")
    ap.add_argument("--keys", type=int, default=100, help="K keys of the spread scenario")
    ap.add_argument("--compare-go", action="store_true", help="also run etcd --proxy on")
    ap.add_argument("--scenarios", default="one,spread",
                    help="which of 'one' (N watchers on one key) and 'spread' (over K keys)")
    ap.add_argument("--no-coalesce", action="store_true",
                    help="ours with --proxy-coalesce-watches=false, N watchers on N keys")
    ap.add_argument("--etcd-bin", default="etcd")
    ap.add_argument("--deadline", type=float, default=1200.0,
                    help="seconds for the whole run (default 1200)")
    ap.add_argument("--setup-timeout", type=float, default=180.0,
                    help="seconds to establish all watches of one run")
    ap.add_argument("--event-timeout", type=float, default=60.0,
                    help="seconds to deliver the events of one run")
    args = ap.parse_args(argv)

    clock = Clock(args.deadline)
    raise_open_files_limit()  # N watcher sockets in this one process
    log("bench process: open files limit %d" % resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    harness.stop_on_sigterm()
    rows = []
    target = Target(size=3)
    proxy = None
    try:
        target.start()
        members = target.members
        for scenario, keys_of_watchers, extra in scenarios(args):
            starters = [("ours", lambda extra=extra: start_ours(
                target.initial_cluster, proxy_args(workers=1) + extra, len(members)))]
            if args.compare_go:
                starters.append(("go", lambda: GoProxy(
                    target.initial_cluster, etcd_bin=args.etcd_bin).start(
                        endpoints=len(members))))
            for label, start in starters:
                log("%s, %s: %d watchers" % (label, scenario, len(keys_of_watchers)))
                proxy = start()
                try:
                    row = run(label, proxy, members, keys_of_watchers, clock, args)
                except Deadline:
                    log("deadline reached")
                    raise
                finally:
                    proxy.stop()
                    proxy = None
                row["scenario"] = scenario
                rows.append(row)
                # next run: fresh keys' events must not be confused with these
                keys_of_watchers = [k + "x" for k in keys_of_watchers]
    except (Deadline, KeyboardInterrupt):
        log("stopped early; partial results below")
    finally:
        if proxy is not None:
            proxy.stop()
        target.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
