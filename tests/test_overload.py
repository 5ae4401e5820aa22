"""Overload and slow clients against a real cluster: the proxy's own trouble is never the
members' fault, and slow clients cannot starve ordinary ones.

* Overload: rounds of wrk at 1,000 connections against one proxy process with a
  short (1 s) header timeout, so that any time the proxy itself falls behind
  would be blamed on the members if it could be.  Afterwards no member has
  ever been marked failed (the config endpoint and the log) and no answer said
  "zero endpoints".
* Slowloris: 500 connections trickle a request head; each is closed once the
  header timeout has passed, while 100 ordinary GETs are each answered in
  under a second.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest
from gevent.pool import Pool

from geproxy.resources import raise_open_files_limit
from geproxy.testing import wrk
from tests.helpers import session

ROUNDS = int(os.environ.get("GEPROXY_OVERLOAD_ROUNDS", "10"))
ROUND_SECONDS = 10


def run_wrk(url, connections, seconds):
    """wrk's summary for a GET of ``url`` (geproxy.testing.wrk.parse), and its output."""
    out = subprocess.run(["wrk", "-t2", "-c%d" % connections, "-d%ds" % seconds,
                          "--timeout", "10s", url], capture_output=True, text=True,
                         timeout=seconds + 60, preexec_fn=raise_open_files_limit)
    assert out.returncode == 0, out.stderr
    return wrk.parse(out.stdout), out.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by make test")
def test_overload_never_marks_healthy_members_failed(cluster, start_proxy, key):
    proxy = start_proxy(cluster.initial_cluster, endpoints=len(cluster.members),
                        args=["--proxy-header-timeout", "1000",
                              "--proxy-client-header-timeout", "5000"])
    with session() as http:
        assert http.put(proxy.url + key, data={"value": "load"}).status_code == 201
    totals = []
    for _round in range(ROUNDS):
        summary, text = run_wrk(proxy.url + key, 1000, ROUND_SECONDS)
        totals.append((summary["requests"], summary["non2xx"], summary["socket_errors"]))
        assert summary["requests"] and summary["non2xx"] == 0, text
        with session() as http:
            config = http.get(proxy.url + "/v2/config/local/proxy").json()
        assert config["failed"] == [] and len(config["endpoints"]) == len(cluster.members), config
    with open(proxy.log_path) as f:
        log = f.read()
    assert "marked endpoint" not in log and "zero endpoints" not in log, log[-3000:]
    print("\noverload rounds (requests, non-2xx, socket errors):", totals)


def trickle(port, interval, until):
    """A slowloris client: one byte of a head at a time; seconds until the proxy closed it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=until)
    started = time.monotonic()
    head = b"GET /v2/keys/slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    try:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - started
            sock.settimeout(interval)
            try:
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except socket.timeout:
                pass
            except OSError:
                return time.monotonic() - started
            if time.monotonic() - started > until:
                return None
        return None
    finally:
        sock.close()


def test_slowloris_clients_are_closed_while_others_are_served(cluster, start_proxy, key):
    proxy = start_proxy(cluster.initial_cluster, endpoints=len(cluster.members),
                        args=["--proxy-client-header-timeout", "1000"])
    with session() as http:
        assert http.put(proxy.url + key, data={"value": "fast"}).status_code == 201
    slow = Pool(500)
    closed_after = []
    for _ in range(500):
        slow.spawn(lambda: closed_after.append(trickle(proxy.port, 0.2, 10.0)))
    latencies = []
    with session() as http:
        for _ in range(100):
            begun = time.monotonic()
            assert http.get(proxy.url + key).json()["node"]["value"] == "fast"
            latencies.append(time.monotonic() - begun)
    slow.join(timeout=30, raise_error=True)
    assert len(closed_after) == 500 and None not in closed_after  # every one was closed
    assert max(closed_after) < 5.0 and min(closed_after) > 0.8, sorted(closed_after)[::50]
    assert max(latencies) < 1.0, max(latencies)
    print("\nslowloris: 500 closed after %.2f-%.2f s; 100 GETs, slowest %.3f s"
          % (min(closed_after), max(closed_after), max(latencies)))
