"""SIGTERM: the graceful stop of a proxy process, with one worker process and with two.

In front of a fake member (tests/fakeetcd.py) that answers ``/slow`` after 3 s
and holds watches the way etcd does, a stopping proxy must let the request in
flight finish, refuse new connections at once, close idle keep-alive
connections at once, end the waiting watches cleanly (their last chunk) and
exit 0, well within --proxy-shutdown-timeout; a second signal stops it at once.
"""

import signal
import socket
import time

import gevent
import pytest

from geproxy.testing import ProxyProcess
from geproxy.testing.rawhttp import Reader
from tests.fakeetcd import BODY, FakeEtcd
from tests.helpers import poll

SHUTDOWN_TIMEOUT_MS = 8000
IDLE = 50
WATCHES = 20  # half on one key (a coalesced group), half on keys of their own


def request(sock, target):
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: proxy\r\n\r\n" % target.encode())


def connect(proxy, timeout=10.0):
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def refused(proxy):
    """True if a new connection is refused; not yet if it was reset or timed out.

    Both happen when the connect races the listener's close: a connection queued
    on it is reset, and a SYN that arrives while the socket is closing is dropped
    without an answer, so the connect waits for the SYN's retransmission (1 s).
    """
    try:
        connect(proxy, timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    except (ConnectionResetError, TimeoutError):
        pass
    return False


@pytest.fixture
def fake():
    with FakeEtcd(slow=3.0) as member:
        yield member


def start(fake, workers, tmp_path):
    proxy = ProxyProcess(fake.initial_cluster, data_dir=str(tmp_path / "proxy"),
                         args=["--workers", str(workers), "--proxy-refresh-interval", "60000",
                               "--proxy-shutdown-timeout", str(SHUTDOWN_TIMEOUT_MS)])
    proxy.start(endpoints=1)
    return proxy


def slow_request(proxy):
    """GET /slow on its own connection: (status, body, when the answer was in); status
    None if the proxy cut it."""
    sock = connect(proxy)
    try:
        request(sock, "/slow")
        status, _headers, body = Reader(sock).response()
        return status, body, time.monotonic()
    except (EOFError, ConnectionError):
        return None, b"", time.monotonic()
    finally:
        sock.close()


def idle_connections(proxy, n):
    """n keep-alive connections, each after one answered request, now idle."""
    socks = []
    for _ in range(n):
        sock = connect(proxy)
        request(sock, "/v2/keys/idle")
        assert Reader(sock).response()[0] == 200
        socks.append(sock)
    return socks


def open_watches(proxy, n):
    """n one-shot watches whose head (from the member, flushed at once) has arrived."""
    readers = []
    for i in range(n):
        sock = connect(proxy)
        request(sock, "/v2/keys/%s?wait=true" % ("shared" if i % 2 else "own%d" % i))
        reader = Reader(sock)
        status, headers = reader.head()
        assert status == 200 and dict(headers)["transfer-encoding"] == "chunked"
        readers.append(reader)
    return readers


def closed_by_proxy(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
def test_sigterm_finishes_in_flight_ends_watches_and_exits_0(fake, workers, tmp_path):
    proxy = start(fake, workers, tmp_path)
    idle = watches = []
    try:
        idle = idle_connections(proxy, IDLE)
        watches = open_watches(proxy, WATCHES)
        slow = gevent.spawn(slow_request, proxy)
        poll(lambda: "/slow" in fake.targets, what="the slow request to reach the member")

        sent = time.monotonic()
        proxy.signal(signal.SIGTERM)

        poll(lambda: refused(proxy), timeout=3.0, what="new connections to be refused")
        for sock in idle:  # idle keep-alive connections: closed at once
            sock.settimeout(3.0)
            assert closed_by_proxy(sock)
        for reader in watches:  # each watch: its last chunk (a complete, empty answer)
            reader.sock.settimeout(3.0)
            assert reader.chunk() == b""
            assert closed_by_proxy(reader.sock)
        poll(lambda: fake.watches == 0, timeout=3.0, what="the upstream watches to close")
        ended_watches = time.monotonic() - sent

        status, body, answered = slow.get(timeout=10)
        assert status == 200 and body == BODY  # the request in flight completed
        assert poll(lambda: proxy.proc.poll() is not None, timeout=10.0)
        exited = time.monotonic() - sent
        assert proxy.proc.returncode == 0
        assert ended_watches < 2.5  # watches and idle connections did not wait for /slow
        assert answered - sent < 3.5
        assert exited < 3.0 + 2.5 < SHUTDOWN_TIMEOUT_MS / 1000.0  # not held by them either
    finally:
        for sock in idle + [reader.sock for reader in watches]:
            sock.close()
        proxy.stop()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
def test_a_second_signal_stops_at_once(fake, workers, second, tmp_path):
    fake.slow = 30.0
    proxy = start(fake, workers, tmp_path)
    try:
        slow = gevent.spawn(slow_request, proxy)
        poll(lambda: "/slow" in fake.targets, what="the slow request to reach the member")
        proxy.signal(signal.SIGTERM)
        poll(lambda: refused(proxy), timeout=3.0, what="the graceful stop to begin")
        sent = time.monotonic()
        proxy.signal(second)
        assert poll(lambda: proxy.proc.poll() is not None, timeout=5.0)
        assert time.monotonic() - sent < 2.5
        assert proxy.proc.returncode == 0
        assert slow.get(timeout=5)[0] is None  # cut
    finally:
        proxy.stop()
