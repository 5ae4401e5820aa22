"""The native client's pool: a pooled connection is peeked before reuse when it idled long
or is about to carry a write; one closed by the member is dropped, never used."""

from gevent import socket as gsocket

from geproxy import client, sockio
from geproxy.pool import Pool


def pair():
    a, b = gsocket.socketpair()
    return sockio.wire(a), b


def test_idle_connection_is_alive():
    wire, peer = pair()
    try:
        assert wire.ready() is None
    finally:
        wire.close()
        peer.close()


def test_connection_with_stray_bytes_is_not_reusable():
    wire, peer = pair()
    try:
        peer.sendall(b"x")
        assert wire.ready() == b"x"
        assert wire.recv() == b"x"  # a peek: nothing was consumed
    finally:
        wire.close()
        peer.close()


def test_connection_closed_by_the_member_is_dropped_on_get():
    pool = Pool("http://127.0.0.1:9", dial_timeout=1.0)
    closed, peer = pair()
    peer.close()
    alive, peer2 = pair()
    pool.open = 2
    pool.idle = [(alive, 0.0), (closed, 0.0)]  # newest last: the closed one is tried first
    try:
        wire, reused = pool.get(check=True)
        assert wire is alive and reused
        assert pool.open == 1 and pool.idle == []
    finally:
        alive.close()
        peer2.close()


def test_request_head_is_byte_exact_and_adds_only_what_http11_needs():
    head = client.request_head("PUT", "/v2/keys/a%2Fb?x=%20", [("X-A", "1"), ("x-a", "2")],
                               "m:2379", b"value=1")
    assert head == (b"PUT /v2/keys/a%2Fb?x=%20 HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nHost: m:2379\r\n"
                    b"Content-Length: 7\r\n\r\n")
    assert client.request_head("GET", "/", [("Host", "c")], "m:1", b"") == \
        b"GET / HTTP/1.1\r\nHost: c\r\n\r\n"


def test_a_value_cannot_start_a_header_line_upstream():
    head = client.request_head("GET", "/", [("Host", "c"), ("X", "a\r\nInjected: 1")], "m:1", b"")
    assert b"\r\nInjected" not in head
