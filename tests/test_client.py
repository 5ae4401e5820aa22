"""The native client: members named by address or host name, and a member that
closes idle keep-alive connections.

A member may close a pooled connection just as the proxy writes the next
request to it.  Reads (GET) are then sent again on a fresh connection and never
fail; writes may already have been applied, so they are never sent twice.
"""

import random

import socket

import gevent
import pytest
from gevent.pool import Pool
from gevent.server import StreamServer

from geproxy import pool as member_pool
from geproxy.client import NativeTransport
from geproxy.errors import ConnectError, UpstreamError
from geproxy.pool import Closer, Pool as MemberPool, ip_family
from tests.fakeupstream import DEFAULT_BODY, BadRequest, FakeMember, Reply, read_request


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET),
                                          ("::1", socket.AF_INET6),
                                          ("localhost", None), ("etcd-0.example", None)])
def test_ip_family(host, family):
    assert ip_family(host) == family


@pytest.mark.parametrize("bind, url_host", [("127.0.0.1", "127.0.0.1"),
                                            ("127.0.0.1", "localhost"),
                                            ("::1", "[::1]")])
def test_members_named_by_address_or_host_name(bind, url_host):
    """An address is dialled directly, a name resolved: both reach the member."""
    with FakeMember(host=bind) as member:
        transport = NativeTransport(dial_timeout=1.0, write_timeout=2.0, read_timeout=2.0)
        try:
            resp = transport.request("http://%s:%d" % (url_host, member.port), "GET",
                                     "/v2/keys/a", [("Host", "m")], b"", 2.0)
            assert (resp.status, resp.read()) == (200, DEFAULT_BODY)
        finally:
            transport.close()
    assert [r.target for r in member.requests] == ["/v2/keys/a"]


class Lag:
    """Stands in for geproxy.lag.LoopLag: whether the proxy's own loop ran late."""

    def __init__(self, lagging):
        self.lagging = lagging

    def lagged_since(self, since):
        return self.lagging


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("lagging", [True, False])
def test_a_dial_outlasting_its_timeout_waits_on_only_while_the_proxy_lags(lagging, host):
    """A member whose accept queue is full drops the SYN, and the kernel sends it again
    after a second.  With the proxy's own loop late (a burst of thousands of new
    watches) the dial waits on: the member is not to blame.  Otherwise it fails after
    its timeout, and the member is marked failed, as before.  The same for a member
    named by a host name (resolved on each connect)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection fills the queue
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    unblock = gevent.spawn_later(0.5, lambda: listener.accept()[0].close())
    pool = MemberPool("http://%s:%d" % (host, port), dial_timeout=0.3, lag=Lag(lagging))
    try:
        if lagging:
            pool.connect().close()  # the SYN sent again about 1 s in gets through
            assert pool.open == 1
        else:
            with pytest.raises(ConnectError, match="timed out"):
                pool.connect()
            assert pool.open == 0
    finally:
        unblock.kill()
        filler.close()
        listener.close()


class Listener:
    """A loopback port whose accepted connections are kept, to see when the proxy closes
    one (its peer reads EOF)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.peers = []

    def accept(self, count):
        for _ in range(count):
            peer = self.sock.accept()[0]
            peer.setblocking(False)
            self.peers.append(peer)
        return self.peers

    def close(self):
        for peer in self.peers:
            peer.close()
        self.sock.close()


def closed(peer):
    """Whether the proxy closed its end of ``peer``'s connection (without waiting)."""
    try:
        return peer.recv(1) == b""
    except BlockingIOError:
        return False


def test_surplus_idle_connections_close_when_the_loop_is_idle_not_at_once():
    """Connections the idle set has no room for wait for the Closer: still open and
    counted right after they were put back, closed once the loop has a turn without
    events.  (Closing thousands at once between watch deliveries held those up.)"""
    listener = Listener()
    pool = MemberPool(listener.url, dial_timeout=1.0, max_idle=1, closer=Closer())
    try:
        wires = [pool.connect() for _ in range(3)]
        peers = listener.accept(3)
        for wire in wires:
            pool.put(wire)
        assert len(pool.idle) == 1 and len(pool.closer.waiting) == 2
        assert [closed(peer) for peer in peers] == [False, False, False]
        assert pool.open == 3
        for peer in peers[1:]:  # the two surplus ones: EOF once the loop idles
            peer.settimeout(2.0)
            assert peer.recv(1) == b""
        assert not closed(peers[0]) and pool.open == 1 and not pool.closer.waiting
    finally:
        pool.close()
        listener.close()


def test_the_closer_closes_at_once_past_its_limit_and_when_the_transport_closes(monkeypatch):
    monkeypatch.setattr(member_pool, "MAX_WAITING", 2)
    listener = Listener()
    transport = NativeTransport(max_idle=0)
    pool = transport.pool(listener.url)
    try:
        wires = [pool.connect() for _ in range(3)]
        peers = listener.accept(3)
        for wire in wires:
            pool.put(wire)
        assert [closed(peer) for peer in peers] == [False, False, True]  # past the limit
        transport.close()  # no loop turn in between: closed now
        assert [closed(peer) for peer in peers] == [True, True, True]
        assert pool.open == 0
    finally:
        listener.close()


class IdleClosingMember:
    """Answers requests and closes any connection idle for ``idle`` seconds.

    Now and then it also reads a request on a connection that already served
    one and closes without answering (``dropped``): to the proxy that looks
    exactly like a pooled connection that went stale, but the member did see
    the request, so sending a write again would apply it twice.
    """

    def __init__(self, idle, drop_rate=0.1):
        self.idle = idle
        self.drop_rate = drop_rate
        self.rng = random.Random(11)
        self.requests = []
        self.closed_idle = 0
        self.dropped = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.address[1]

    def handle(self, sock, _address):
        rfile = sock.makefile("rb")
        served = 0
        try:
            while True:
                readable = gevent.select.select([sock], [], [], self.idle)[0]
                if not readable:
                    self.closed_idle += 1
                    return
                try:
                    request = read_request(rfile)
                except (BadRequest, OSError):
                    return
                if request is None:
                    return
                self.requests.append(request)
                if served and self.rng.random() < self.drop_rate:
                    self.dropped += 1
                    return
                served += 1
                sock.sendall(Reply(body=request.target.encode()).encode(request.method))
        finally:
            rfile.close()
            sock.close()

    def close(self):
        self.server.stop(timeout=1)


@pytest.mark.parametrize("pipelines", [0, 2], ids=["own connections", "pipelined reads"])
def test_gets_never_fail_and_writes_are_never_sent_twice(pipelines):
    member = IdleClosingMember(idle=0.02)
    transport = NativeTransport(dial_timeout=1.0, write_timeout=2.0, read_timeout=2.0,
                                pipelines=pipelines)
    rng = random.Random(7)
    outcomes = []

    def one(i):
        gevent.sleep(rng.uniform(0, 0.04))  # pauses around the member's idle limit
        method = rng.choice(("GET", "GET", "PUT", "POST"))
        target = "/v2/keys/r%d" % i
        body = b"value=%d" % i if method != "GET" else b""
        headers = [("Host", "m")] + ([("Content-Length", str(len(body)))] if body else [])
        try:
            resp = transport.request(member.url, method, target, headers, body, 2.0)
            outcomes.append((method, target, resp.status, resp.read()))
        except UpstreamError as exc:
            outcomes.append((method, target, None, str(exc)))

    try:
        pool = Pool(10)
        for i in range(400):
            pool.spawn(one, i)
        pool.join(timeout=60, raise_error=True)
    finally:
        transport.close()
        member.close()
    assert len(outcomes) == 400
    assert member.closed_idle >= 5 and member.dropped >= 5  # both races were really run
    gets = [o for o in outcomes if o[0] == "GET"]
    assert all(status == 200 and body == target.encode() for _m, target, status, body in gets), \
        [o for o in gets if o[2] != 200][:5]
    seen = [(r.method, r.target) for r in member.requests if r.method != "GET"]
    assert len(seen) == len(set(seen))  # no write reached the member twice
    for method, target, status, _ in outcomes:
        if method != "GET" and status is not None:  # an answered write was seen exactly once
            assert seen.count((method, target)) == 1
