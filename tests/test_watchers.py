"""Many clients: shared watches, the connection cap, running out of files, idle clients.

Everything runs against the real session cluster through real proxy processes,
with raw sockets for the clients.  Upstream watches are counted by the members
themselves: the sum of ``etcd_debugging_store_watchers`` over the members.
"""

import json
import socket
import sys
import time

import gevent
import pytest
from gevent.pool import Pool

from geproxy.testing import ProxyProcess
from geproxy.testing.procfs import cpu_seconds
from geproxy.testing.rawhttp import Reader
from tests.helpers import poll, settled_watchers, watchers

STATUS_WAIT = 10.0  # seconds any single read from the proxy may take


# --- helpers --------------------------------------------------------------------------


class Client(Reader):
    """One raw HTTP/1.1 client connection to the proxy (keep-alive)."""

    def __init__(self, port, timeout=STATUS_WAIT):
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=timeout))

    def send(self, target, headers=(), method="GET"):
        lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1"]
        lines += ["%s: %s" % h for h in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def head(self):
        """(status, {lower-case name: value}) of the next response."""
        status, fields = super().head()
        return status, dict(fields)

    def close(self):
        self.sock.close()


def open_watches(port, targets, headers=()):
    """One client per target, each past the response headers (the proxy flushes them early)."""
    def one(target):
        c = Client(port)
        c.send(target, headers)
        status, hdrs = c.head()
        assert status == 200, status
        return c, hdrs
    pool = Pool(50)
    return pool.map(one, targets)


def close_all(clients):
    for c in clients:
        c.close()


def event_of(client, headers):
    return client.body(headers)


# --- coalescing -----------------------------------------------------------------------


def test_identical_watches_share_one_upstream_watch(http, cluster, proxy, key):
    base = settled_watchers(cluster)
    # the same parameters in either order are the same watch
    targets = [key + ("?wait=true&recursive=false" if i % 2 else "?recursive=false&wait=true")
               for i in range(200)]
    clients = open_watches(proxy.port, targets)
    try:
        assert poll(lambda: watchers(cluster) == base + 1)
        assert watchers(cluster) == base + 1  # every client has joined: exactly one
        put = http.put(proxy.url + key, data={"value": "shared"})
        assert put.status_code == 201
        bodies = Pool(50).map(lambda ch: event_of(*ch), clients)
    finally:
        close_all(c for c, _ in clients)
    assert len(bodies) == 200 and len(set(bodies)) == 1
    event = json.loads(bodies[0])
    assert event["action"] == "set" and event["node"]["value"] == "shared"
    assert event["node"]["modifiedIndex"] == put.json()["node"]["modifiedIndex"]
    assert poll(lambda: watchers(cluster) == base)


def test_different_authorization_is_never_shared(http, cluster, proxy, key):
    base = settled_watchers(cluster)
    alice = open_watches(proxy.port, [key + "?wait=true"] * 2,
                         headers=[("Authorization", "Basic YWxpY2U6YQ==")])
    bob = open_watches(proxy.port, [key + "?wait=true"],
                       headers=[("Authorization", "Basic Ym9iOmI=")])
    try:
        assert poll(lambda: watchers(cluster) == base + 2)
        assert watchers(cluster) == base + 2
        http.put(proxy.url + key, data={"value": "auth"})
        for c, hdrs in alice + bob:
            assert json.loads(event_of(c, hdrs))["node"]["value"] == "auth"
    finally:
        close_all(c for c, _ in alice + bob)


def test_different_wait_index_is_never_shared(http, cluster, proxy, key):
    index = int(http.get(proxy.url + key).headers["X-Etcd-Index"])
    base = settled_watchers(cluster)
    first = open_watches(proxy.port, ["%s?wait=true&waitIndex=%d" % (key, index + 1)] * 3)
    second = open_watches(proxy.port, ["%s?waitIndex=%d&wait=true" % (key, index + 2)] * 3)
    try:
        assert poll(lambda: watchers(cluster) == base + 2)
        assert watchers(cluster) == base + 2
        one = http.put(proxy.url + key, data={"value": "one"}).json()["node"]["modifiedIndex"]
        two = http.put(proxy.url + key, data={"value": "two"}).json()["node"]["modifiedIndex"]
        for c, hdrs in first:
            assert json.loads(event_of(c, hdrs))["node"]["modifiedIndex"] == one
        for c, hdrs in second:  # index+2 is after "one" only if nothing else wrote
            assert json.loads(event_of(c, hdrs))["node"]["modifiedIndex"] in (one, two)
        assert one >= index + 1
    finally:
        close_all(c for c, _ in first + second)


def test_clients_leaving_early_do_not_disturb_the_rest(http, cluster, proxy, key):
    base = settled_watchers(cluster)
    clients = open_watches(proxy.port, [key + "?wait=true"] * 10)
    try:
        assert poll(lambda: watchers(cluster) == base + 1)
        close_all(c for c, _ in clients[:5])  # the first to join among them
        # still one upstream watch, never a second one, and nobody got a premature answer
        assert not poll(lambda: watchers(cluster) != base + 1, timeout=0.5)
        http.put(proxy.url + key, data={"value": "stayed"})
        for c, hdrs in clients[5:]:
            assert json.loads(event_of(c, hdrs))["node"]["value"] == "stayed"
    finally:
        close_all(c for c, _ in clients)
    assert poll(lambda: watchers(cluster) == base)


def test_last_client_leaving_frees_the_members_watcher(cluster, proxy, key):
    base = settled_watchers(cluster)
    clients = open_watches(proxy.port, [key + "?wait=true"] * 3)
    assert poll(lambda: watchers(cluster) == base + 1)
    close_all(c for c, _ in clients)
    closed_at = time.monotonic()
    assert poll(lambda: watchers(cluster) == base, timeout=3.0)
    assert time.monotonic() - closed_at < 1.5
    # and the next watch on the key starts a fresh upstream request
    again = open_watches(proxy.port, [key + "?wait=true"])
    try:
        assert poll(lambda: watchers(cluster) == base + 1)
    finally:
        close_all(c for c, _ in again)


def test_readonly_proxy_coalesces_too(http, cluster, proxy, readonly_proxy, key):
    base = settled_watchers(cluster)
    clients = open_watches(readonly_proxy.port, [key + "?wait=true"] * 20)
    try:
        assert poll(lambda: watchers(cluster) == base + 1)
        assert watchers(cluster) == base + 1
        http.put(proxy.url + key, data={"value": "ro"})
        bodies = {event_of(c, hdrs) for c, hdrs in clients}
        assert len(bodies) == 1 and json.loads(bodies.pop())["node"]["value"] == "ro"
    finally:
        close_all(c for c, _ in clients)


def test_stream_watches_are_not_shared(cluster, proxy, key):
    base = settled_watchers(cluster)
    clients = open_watches(proxy.port, [key + "?wait=true&stream=true"] * 2)
    try:
        assert poll(lambda: watchers(cluster) == base + 2)
    finally:
        close_all(c for c, _ in clients)
    assert poll(lambda: watchers(cluster) == base)


def test_without_coalescing_each_watch_is_its_own_upstream_request(
        http, cluster, start_proxy, key):
    p = start_proxy(cluster.initial_cluster, ["--proxy-coalesce-watches=false"],
                    endpoints=len(cluster.members))
    base = settled_watchers(cluster)
    clients = open_watches(p.port, [key + "?wait=true"] * 20)
    try:
        assert poll(lambda: watchers(cluster) == base + 20)
        http.put(p.url + key, data={"value": "each"})
        for c, hdrs in clients:
            assert json.loads(event_of(c, hdrs))["node"]["value"] == "each"
    finally:
        close_all(c for c, _ in clients)
    assert poll(lambda: watchers(cluster) == base)


# --- connection cap and running out of files -------------------------------------------


def served(port):
    """A new connection that got a 200 for the local config endpoint, or None if shed."""
    c = Client(port, timeout=2.0)
    try:
        c.send("/v2/config/local/proxy")
        status, headers, _body = c.response()
    except (EOFError, OSError):
        c.close()
        return None
    if status != 200:
        c.close()
        return None
    return c


def shed_answer(port):
    """(seconds, what) for a connection the proxy is expected to shed."""
    started = time.monotonic()
    c = Client(port, timeout=3.0)
    try:
        c.send("/v2/config/local/proxy")
        status, headers, _body = c.response()
        what = status
        assert headers.get("connection", "").lower() == "close"
        assert c.sock.recv(1) == b""  # and then closed
    except (EOFError, ConnectionResetError):
        what = "closed"
    finally:
        c.close()
    return time.monotonic() - started, what


def test_connection_cap_sheds_quickly_and_recovers(cluster, start_proxy):
    p = start_proxy(cluster.initial_cluster, ["--proxy-max-connections", "20"],
                    endpoints=len(cluster.members))
    held = []
    try:
        deadline = time.monotonic() + 10.0
        while len(held) < 20 and time.monotonic() < deadline:
            c = served(p.port)  # start-up probes may still hold a slot for a moment
            if c is not None:
                held.append(c)
        assert len(held) == 20
        for _ in range(3):
            elapsed, what = shed_answer(p.port)
            assert what in (503, "closed")
            assert elapsed < 1.0
        # the held connections are still served
        held[0].send("/v2/config/local/proxy")
        assert held[0].response()[0] == 200
        close_all(held[:5])
        del held[:5]
        fresh = poll(lambda: served(p.port))
        assert fresh is not None
        held.append(fresh)
        assert p.alive
    finally:
        close_all(held)


_EXEC_WITH_NOFILE = ("import os, resource, sys; n = int(sys.argv[1]); "
                     "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
                     "os.execv(sys.argv[2], sys.argv[2:])")


class NofileProxy(ProxyProcess):
    """A proxy process whose open-files limit (soft and hard) is ``nofile``."""

    def __init__(self, *args, nofile, **kw):
        super().__init__(*args, **kw)
        self.nofile = nofile

    def command(self):
        return [sys.executable, "-c", _EXEC_WITH_NOFILE, str(self.nofile)] + super().command()


def test_out_of_files_sheds_quickly_without_spinning_and_recovers(cluster, tmp_path):
    p = NofileProxy(cluster.initial_cluster, nofile=64, data_dir=str(tmp_path / "proxy"))
    held = []
    try:
        p.start(endpoints=len(cluster.members))
        for _ in range(100):  # bounded: 64 descriptors cannot hold 100 connections
            c = served(p.port)
            if c is None:
                break
            held.append(c)
        assert 10 < len(held) < 64, len(held)
        for _ in range(3):
            elapsed, what = shed_answer(p.port)
            assert what in (503, "closed") and elapsed < 1.0
        before = cpu_seconds(p.pid)
        gevent.sleep(1.0)  # a second at the limit: the proxy must be idle, not retrying
        assert cpu_seconds(p.pid) - before < 0.3
        assert p.alive
        close_all(held[:10])
        del held[:10]
        fresh = poll(lambda: served(p.port))
        assert fresh is not None
        held.append(fresh)
    finally:
        close_all(held)
        p.stop()


# --- idle clients ---------------------------------------------------------------------


def test_idle_keepalive_connection_closed_but_not_a_waiting_watch(http, cluster, start_proxy,
                                                                  key):
    p = start_proxy(cluster.initial_cluster, ["--proxy-client-idle-timeout", "300"],
                    endpoints=len(cluster.members))
    idle = Client(p.port)
    watch = Client(p.port)
    try:
        idle.send(key)
        assert idle.response()[0] == 404  # answered; now the connection sits idle
        answered = time.monotonic()
        watch.send(key + "?wait=true")
        status, hdrs = watch.head()
        assert status == 200
        idle.sock.settimeout(5.0)
        assert idle.sock.recv(1) == b""  # closed by the proxy
        idle_for = time.monotonic() - answered
        assert 0.25 <= idle_for < 3.0
        # the watch has now waited longer than the idle timeout and is still open
        watch.sock.settimeout(max(0.1, 1.0 - (time.monotonic() - answered)))
        with pytest.raises(socket.timeout):
            watch.sock.recv(1)
        watch.sock.settimeout(STATUS_WAIT)
        http.put(p.url + key, data={"value": "late"})
        assert json.loads(watch.body(hdrs))["node"]["value"] == "late"
        # once answered, the watch connection is an idle keep-alive connection too
        assert watch.sock.recv(1) == b""
    finally:
        idle.close()
        watch.close()


def test_watch_key_ignores_parameter_order_but_not_values():
    from geproxy.coalesce import watch_key
    a = watch_key("/v2/keys/a?wait=true&waitIndex=7&recursive=true", None)
    b = watch_key("/v2/keys/a?recursive=true&waitIndex=7&wait=true", None)
    assert a == b
    assert a != watch_key("/v2/keys/a?wait=true&waitIndex=8&recursive=true", None)
    assert a != watch_key("/v2/keys/a?wait=true&waitIndex=7&recursive=true", "Basic eDp5")
    assert a != watch_key("/v2/keys/b?wait=true&waitIndex=7&recursive=true", None)
    # etcd reads the first of repeated parameters: their order is kept
    assert (watch_key("/k?waitIndex=1&wait=true&waitIndex=2", None)
            != watch_key("/k?waitIndex=2&wait=true&waitIndex=1", None))
