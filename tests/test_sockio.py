"""geproxy.sockio relies on gevent internals; this fails loudly on a gevent whose layout differs.

setup.py pins gevent to the range these tests passed on.
"""

import socket

import gevent
import pytest
from gevent import socket as gsocket

from geproxy import sockio


@pytest.fixture
def wires():
    """Two Wires on the ends of a connected socket pair, closed afterwards."""
    a, b = gsocket.socketpair()
    left, right = sockio.wire(a), sockio.wire(b)
    yield left, right
    left.close()
    right.close()


def test_gevent_sockets_have_the_parts_wire_uses():
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
    assert not left.tls
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
    assert right.ready() == b"peek" and right.recv_wait(1.0) == b"peek"


def test_timed_wait_raises_socket_timeout_and_leaves_the_wire_usable(wires):
    left, right = wires
    with pytest.raises(socket.timeout):
        right.recv_wait(0.05)
    gevent.spawn_later(0.05, left.send_all, b"late")
    assert right.recv_wait(2.0) == b"late"


def test_closed_peer_reads_as_empty(wires):
    left, right = wires
    left.close()
    assert right.ready() == b"" and right.recv_wait(1.0) == b""
