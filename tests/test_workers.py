"""``--workers 2``: one arbiter, two worker processes sharing the listener, real etcd.

Which worker served a connection is read from /proc (the worker holding the
server side of that TCP connection), so the proxy needs no debug endpoint.
"""

import http.client
import os
import signal
import time

import pytest

from geproxy.testing.procfs import children, gone, socket_inode, socket_inodes
from tests.helpers import poll

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")


def serving_worker(proxy, conn, workers):
    """The worker pid holding the server side of this client connection."""
    inode = socket_inode(proxy.port, conn.sock.getsockname()[1])
    owners = [pid for pid in workers if inode in socket_inodes([pid])]
    return owners[0] if len(owners) == 1 else None


def http_connection(proxy):
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)


@pytest.fixture
def workers_proxy(cluster, start_proxy):
    return start_proxy(cluster.initial_cluster, args=["--workers", "2"],
                       endpoints=len(cluster.members))


def test_two_workers_serve_writes_and_reads(http, workers_proxy, key):
    assert poll(lambda: len(children(workers_proxy.pid)) == 2, timeout=10)
    r = http.put(workers_proxy.url + key, data={"value": "shared"})
    assert r.status_code == 201
    for _ in range(40):  # a fresh connection each time: any worker may take it
        conn = http_connection(workers_proxy)
        try:
            conn.request("GET", key)
            resp = conn.getresponse()
            assert resp.status == 200
            assert b'"value":"shared"' in resp.read()
        finally:
            conn.close()


def test_connections_spread_over_both_workers_and_sigterm_stops_all(workers_proxy):
    proxy = workers_proxy
    assert poll(lambda: len(children(proxy.pid)) == 2, timeout=10)
    workers = children(proxy.pid)
    seen, held = set(), []
    try:
        # Each connection stays open after its request, so its worker can be
        # looked up; both workers accept from the shared listener.
        for _ in range(200):
            conn = http_connection(proxy)
            held.append(conn)
            conn.request("GET", "/v2/keys/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            seen.add(serving_worker(proxy, conn, workers))
            if seen >= set(workers):
                break
        assert seen == set(workers)

        # The held connections are idle keep-alives: they must not hold the
        # shutdown for the graceful timeout.
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert poll(lambda: proxy.proc.poll() is not None, timeout=12.0)
        assert poll(lambda: all(gone(pid) for pid in workers), timeout=1.0)
        assert time.monotonic() - started < 5.0
        assert proxy.proc.returncode == 0
    finally:
        for conn in held:
            conn.close()
