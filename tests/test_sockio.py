"""geproxy.sockio relies on gevent internals; this fails loudly on a gevent whose layout differs.

setup.py pins gevent to the range these tests passed on.
"""

import socket
import ssl

import gevent
import pytest
import trustme
from gevent import socket as gsocket

from geproxy import sockio
from tests.helpers import poll


def tls_pair():
    """Two gevent SSLSockets on the ends of a socket pair, handshake done."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    a, b = gsocket.socketpair()
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    handshake = gevent.spawn(server.do_handshake)
    client.do_handshake()
    handshake.get(timeout=5.0)
    return server, client


@pytest.fixture(params=["plain", "tls"])
def wires(request):
    """Two Wires (TLSWires with "tls") on the ends of a connected socket pair, closed afterwards."""
    a, b = gsocket.socketpair() if request.param == "plain" else tls_pair()
    left, right = sockio.wire(a), sockio.wire(b)
    assert left.tls == (request.param == "tls")
    yield left, right
    left.close()
    right.close()


def test_gevent_sockets_have_the_parts_wire_uses():
    server, client = tls_pair()
    try:
        sockio.check_gevent_internals(server)
    finally:
        server.close()
        client.close()
    a, b = gsocket.socketpair()
    try:
        sockio.check_gevent_internals(a)
    finally:
        a.close()
        b.close()


def test_check_refuses_an_object_without_them():
    with pytest.raises(RuntimeError, match="internals differ"):
        sockio.check_gevent_internals(object())


def test_send_recv_and_peek_on_a_wire(wires):
    left, right = wires
    # more than a socket buffer: the sender waits for writability meanwhile
    sender = gevent.spawn(left.send_all, b"x" * 300000, 5.0)
    received = b""
    while len(received) < 300000:
        data = right.recv(5.0)
        assert data, "the peer closed after %d bytes" % len(received)
        received += data
    sender.get(timeout=5.0)
    assert received == b"x" * 300000
    assert right.ready() is None
    left.send_all(b"peek")
    assert poll(lambda: right.ready() is not None, timeout=2.0)
    assert right.ready() == (b"?" if right.tls else b"peek")  # TLS: decrypted or not, something
    assert right.recv_wait(1.0) == b"peek"


def test_a_late_reader_gets_every_byte_of_a_send_larger_than_the_buffers(wires):
    left, right = wires
    n = 8 * 1024 * 1024
    sender = gevent.spawn(left.send_all, b"x" * n, 10.0)
    gevent.sleep(0.2)  # nobody reads yet: the sender finds its socket buffer full
    assert not sender.ready()
    received = 0
    while received < n:
        data = right.recv(5.0)
        assert data, "the peer closed after %d bytes" % received
        received += len(data)
    sender.get(timeout=5.0)
    assert received == n and right.ready() is None


def test_timed_wait_raises_socket_timeout_and_leaves_the_wire_usable(wires):
    left, right = wires
    with pytest.raises(socket.timeout):
        right.recv_wait(0.05)
    gevent.spawn_later(0.05, left.send_all, b"late")
    assert right.recv_wait(2.0) == b"late"


def test_closed_peer_reads_as_empty(wires):
    left, right = wires
    left.close()
    # TLS: the server's session tickets may still be unread, so "something is there"
    assert right.ready() in ((b"?", b"") if right.tls else (b"",))
    assert right.recv_wait(1.0) == b""
