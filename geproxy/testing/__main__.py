"""``python -m geproxy.testing`` (``make run``): a local etcd cluster with the proxy in front.

Prints the member URLs and ready-to-paste curl lines, then runs until Ctrl-C
or SIGTERM, and stops everything it started (by pid) before exiting 0.
Arguments it does not know are passed to the proxy.
"""

import argparse
import os
import signal
import sys
import time

from geproxy.testing.cluster import LocalCluster
from geproxy.testing.net import loopback_url
from geproxy.testing.proxy import ProxyProcess


class Stop(Exception):
    """SIGTERM, turned into the same orderly shutdown as Ctrl-C."""


def handle_stop(signum, frame):
    raise Stop(signum)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m geproxy.testing",
        description="Run a local etcd cluster with geproxy in front of it. "
                    "Unrecognised arguments are passed to the proxy.")
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--proxy-listen", default="http://127.0.0.1:8080")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    args, extra = ap.parse_known_args(argv)
    return args, extra[1:] if extra[:1] == ["--"] else extra


def greet(cluster, proxy, url):
    print("\netcd members:")
    for m in cluster.members:
        print("  %s  client %s  peer %s  pid %s" % (m.name, m.client_url, m.peer_url, m.pid))
    print("\ngeproxy (pid %s) listening on %s\n" % (proxy.pid, url))
    print("Try:")
    print("  curl -sS -X PUT %s/v2/keys/hello -d value=world" % url)
    print("  curl -sS %s/v2/keys/hello" % url)
    print("  curl -sS '%s/v2/keys/hello?wait=true'" % url)
    print("  curl -sS -N '%s/v2/keys/hello?wait=true&stream=true'" % url)
    print("  ETCDCTL_API=2 etcdctl --no-sync --endpoints %s ls /" % url)
    print("\nCtrl-C to stop.", flush=True)


def main(argv=None):
    """Start the cluster and the proxy, wait for Ctrl-C / SIGTERM; the exit status."""
    args, extra = parse_args(argv)
    proxy_url = loopback_url(args.proxy_listen.rstrip("/"))
    old = {s: signal.signal(s, handle_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = proxy = None
    code = 0
    try:
        cluster = LocalCluster(size=args.size)
        t0 = time.monotonic()
        cluster.start(timeout=args.startup_timeout)
        print("etcd cluster ready in %.1fs (data and logs in %s)"
              % (time.monotonic() - t0, cluster.base_dir), flush=True)
        # The proxy logs straight to our terminal; in its own session, so
        # Ctrl-C reaches only us and we stop it deliberately.
        proxy = ProxyProcess(cluster.initial_cluster, args=extra, listen_url=proxy_url,
                             data_dir=os.path.join(cluster.base_dir, "proxy-data"),
                             inherit_output=True)
        proxy.start(endpoints=1, timeout=30.0)
        greet(cluster, proxy, proxy_url)
        code = proxy.proc.wait()
        print("proxy exited unexpectedly with code %s" % code, file=sys.stderr)
        code = code or 1
    except (Stop, KeyboardInterrupt):
        print("\nstopping ...", flush=True)
        code = 0
    except RuntimeError as e:
        print("error: %s" % e, file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not abort the cleanup half-way.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            if proxy is not None:
                proxy.stop()
            if cluster is not None:
                cluster.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return code


if __name__ == "__main__":
    sys.exit(main())
