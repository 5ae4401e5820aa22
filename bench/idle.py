"""Memory per idle keep-alive client connection: ours against the Go proxy, same run.

Starts a local 3-member etcd cluster and, one proxy at a time (ours, then
``etcd --proxy on``), opens N client connections from this process; each makes
one GET and then stays open, idle, as a keep-alive client between requests.
Once they are all idle (and ours has parked them, after a second), the
proxy's RSS is read; the figure is the RSS grown over the first ``--warm``
connections, divided by the connections opened after them.

    .venv/bin/python bench/idle.py                      # 15,000 connections
    .venv/bin/python bench/idle.py --connections 5000 --rounds 3
    .venv/bin/python bench/idle.py --tls --connections 5000  # https on both sides

Everything listens on 127.0.0.1; every process is stopped by pid.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import errno  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from gevent.pool import Pool  # noqa: E402

from certs import BenchTLS  # noqa: E402
from harness import BENCH_KEY, log, stop_on_sigterm  # noqa: E402
from proxies import GoProxy, start_ours  # noqa: E402
from geproxy.testing.rawhttp import Reader  # noqa: E402
from tables import table  # noqa: E402
from target import Target  # noqa: E402
from geproxy.resources import raise_open_files_limit  # noqa: E402
from geproxy.testing import procfs  # noqa: E402

SETTLE = 3.0  # seconds idle before RSS is read (ours parks idle connections after 1 s)
TARGET_KB = 8.0  # issue target: at most 8 KB per idle connection at 15,000


def open_idle(port, count, path, socks, context=None):
    """``count`` connections that each made one GET and wait, idle; appended to socks
    (TLS connections with ``context``)."""
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode()
    no_ports = []

    def one():
        if no_ports:
            return
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            no_ports.append(exc)  # said once below, not as one traceback per greenlet
            return
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(request)
        reader = Reader(sock)
        status = reader.response()[0]
        if status != 200 or reader.buf:
            raise RuntimeError("proxy answered %s (%d bytes more)" % (status, len(reader.buf)))
        socks.append(sock)

    pool = Pool(500)
    for _ in range(count):
        pool.spawn(one)
    pool.join(raise_error=True)
    if no_ports:
        raise SystemExit("out of local ports toward 127.0.0.1 after %d connections (earlier "
                         "runs leave sockets in TIME_WAIT for a minute: see `ss -s`); wait "
                         "and run again" % len(socks))


def measure(proxy, pid, args, path, context):
    socks = []
    try:
        open_idle(proxy.port, args.warm, path, socks, context)
        time.sleep(SETTLE)
        base = procfs.rss_bytes(pid, descendants=True)
        open_idle(proxy.port, args.connections - args.warm, path, socks, context)
        time.sleep(SETTLE)
        rss = procfs.rss_bytes(pid, descendants=True)
        return (rss - base) / (args.connections - args.warm) / 1024.0, rss / 1e6
    finally:
        for sock in socks:
            sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--warm", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tls", action="store_true",
                    help="https everywhere: members, both proxies' listeners and their "
                         "connections to the members (certificates from certs.py)")
    args = ap.parse_args()
    stop_on_sigterm()
    soft, _hard = raise_open_files_limit()
    if soft is not None and soft < args.connections + 1000:
        raise SystemExit("open-files limit %d is too low for %d connections"
                         % (soft, args.connections))
    tls = BenchTLS() if args.tls else None
    context = tls.context() if tls is not None else None
    target = Target(tls=tls.cluster if tls is not None else None).start()
    path = "/v2/keys/" + BENCH_KEY
    results = {"ours": [], "go": []}
    try:
        target.put(BENCH_KEY, "idle")
        for rnd in range(args.rounds):
            for name in ("ours", "go"):
                if name == "ours":
                    proxy = start_ours(target.initial_cluster, ["--log-level", "warn"],
                                       len(target.members), tls)
                else:
                    proxy = GoProxy(target.initial_cluster, tls=tls)
                    proxy.start(endpoints=len(target.members))
                try:
                    per_conn, rss_mb = measure(proxy, proxy.pid, args, path, context)
                finally:
                    proxy.stop()
                results[name].append((per_conn, rss_mb))
                log("[round %d] %-4s %d idle connections: %.2f KB each, RSS %.0f MB"
                    % (rnd + 1, name, args.connections, per_conn, rss_mb))
    finally:
        target.close()
        if tls is not None:
            shutil.rmtree(tls.dir, ignore_errors=True)
    rows = []
    go_kb = statistics.median(r[0] for r in results["go"])
    for name in ("ours", "go"):
        kb = statistics.median(r[0] for r in results[name])
        rows.append([name, args.connections, "%.2f" % kb,
                     "%.0f" % statistics.median(r[1] for r in results[name]),
                     "%.2f" % (kb / go_kb)])
    print(table(["proxy", "idle connections", "KB per connection", "RSS MB", "vs Go"], rows))
    ours_kb = statistics.median(r[0] for r in results["ours"])
    if tls is not None:  # the target is for plain connections
        print("\n%-6s ours %.2f KB per idle https connection (Go %.2f KB)"
              % ("ok" if ours_kb <= go_kb else "MISS", ours_kb, go_kb))
        return
    print("\n%-6s ours %.2f KB per idle connection (target <= %.0f KB; Go %.2f KB)"
          % ("ok" if ours_kb <= TARGET_KB else "MISS", ours_kb, TARGET_KB, go_kb))


if __name__ == "__main__":
    main()
