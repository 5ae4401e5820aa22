"""The connection handler on real sockets, in front of recording fake members.

Malformed heads are refused with their 4xx (and nothing reaches a member),
HTTP/1.0 and keep-alive rules, pipelining, Expect: 100-continue, answers
without a body, streaming of answers of unknown length, and the client
header timeout.
"""

import socket
import time

import pytest
from gevent.event import Event
from gevent.server import StreamServer

from geproxy.testing.rawhttp import Reader
from tests.fakeupstream import FakeMember, Reply
from tests.helpers import poll
from tests.inproc import connect, exchange, proxy_stack, status_of

PUT = b"PUT /v2/keys/k HTTP/1.1\r\nHost: x\r\n"
FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"

# case -> (request bytes, expected status); each must be refused before a member sees it
MALFORMED = {
    "header line without a colon": (PUT + b"Xyz\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "space inside a header name": (PUT + b"X Y: z\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "target without a leading slash": (
        b"PUT v2/keys/k HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "obs-fold": (PUT + b"X-A: a\r\n b\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "bare CR in a value": (
        PUT + b"X-A: a\rAuthorization: Basic Zm9v\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "NUL in a value": (PUT + b"X-A: a\x00b\r\nContent-Length: 7\r\n\r\nvalue=1", 400),
    "space before the colon": (PUT + b"Content-Length : 7\r\n" + FORM + b"\r\nvalue=1", 400),
    "bad chunk size": (PUT + b"Transfer-Encoding: chunked\r\n" + FORM
                       + b"\r\nzz\r\nvalue=1\r\n0\r\n\r\n", 400),
    "chunk-size overflow": (PUT + b"Transfer-Encoding: chunked\r\n" + FORM
                            + b"\r\nfffffffffffffffffff\r\nvalue=1\r\n0\r\n\r\n", 400),
    "chunk data without CRLF": (PUT + b"Transfer-Encoding: chunked\r\n" + FORM
                                + b"\r\n7\r\nvalue=1XX0\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        PUT + b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n" + FORM
        + b"\r\n7\r\nvalue=1\r\n0\r\n\r\n", 400),
    "Content-Length: +5": (PUT + b"Content-Length: +7\r\n" + FORM + b"\r\nvalue=1", 400),
    "differing repeated Content-Lengths": (
        PUT + b"Content-Length: 7\r\nContent-Length: 8\r\n" + FORM + b"\r\nvalue=1", 400),
    "two Transfer-Encoding: chunked": (
        PUT + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n" + FORM
        + b"\r\n7\r\nvalue=1\r\n0\r\n\r\n", 501),
    "unknown transfer coding": (PUT + b"Transfer-Encoding: gzip\r\n\r\nvalue=1", 501),
    "1.1 MiB of headers in 20 lines": (
        PUT + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 60000) for i in range(20))
        + b"Content-Length: 7\r\n\r\nvalue=1", 431),
    "request line over 64 KiB": (
        b"GET /v2/keys/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "HTTP/1.1 without Host": (b"GET /v2/keys/k HTTP/1.1\r\n\r\n", 400),
    "two Host headers": (b"GET /v2/keys/k HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "HTTP/0.9 request line": (b"GET /v2/keys/k\r\n\r\n", 400),
    "version without minor": (b"GET /v2/keys/k HTTP/1\r\nHost: x\r\n\r\n", 400),
    "HTTP/2.0": (b"GET /v2/keys/k HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "'*' on GET": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown expectation": (PUT + b"Expect: foo\r\nContent-Length: 7\r\n\r\nvalue=1", 417),
    "two spaces in the request line": (b"GET  /v2/keys/k HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "lines ending in LF only": (
        b"PUT /v2/keys/k HTTP/1.1\nHost: x\nContent-Length: 7\n\nvalue=1", 400),
    "head cut off, then half-close": (PUT + b"Content-Length: 7", 400),
}


@pytest.fixture
def member():
    fake = FakeMember()
    yield fake
    fake.close()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_head_is_refused_and_nothing_reaches_the_member(member, case):
    raw, status = MALFORMED[case]
    with proxy_stack(member.url) as (port, _server):
        answer = exchange(port, raw)
        assert status_of(answer) == status, answer[:200]
        assert b"\r\nConnection: close\r\n" in answer.split(b"\r\n\r\n")[0] + b"\r\n"
        # the proxy keeps serving, and the only request the member ever saw is this one
        ok = exchange(port, b"GET /v2/keys/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(ok) == 200
    assert [r.target for r in member.requests] == ["/v2/keys/ok"]


def test_cut_off_head_with_full_close_is_not_carried_out(member):
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        sock.sendall(b"DELETE /v2/keys/k HTTP/1.1\r\nHost: x\r\nX-P: y")
        sock.close()
        assert status_of(exchange(port, b"GET /v2/keys/ok HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n")) == 200
    assert [(r.method, r.target) for r in member.requests] == [("GET", "/v2/keys/ok")]


def test_identical_repeated_content_length_is_one_length(member):
    with proxy_stack(member.url) as (port, _server):
        answer = exchange(port, PUT + b"Content-Length: 7\r\nContent-Length: 7\r\n" + FORM
                          + b"Connection: close\r\n\r\nvalue=1")
    assert status_of(answer) == 200
    assert [(r.method, r.body, r.header_all("Content-Length")) for r in member.requests] == \
        [("PUT", b"value=1", ["7"])]


def test_chunked_request_body_is_decoded_and_sent_with_its_length(member):
    with proxy_stack(member.url) as (port, _server):
        answer = exchange(port, PUT + b"Transfer-Encoding: chunked\r\n" + FORM
                          + b"Connection: close\r\n\r\n3\r\nval\r\n4;x=y\r\nue=1\r\n0\r\n"
                          b"X-Trailer: t\r\n\r\n")
    assert status_of(answer) == 200
    (request,) = member.requests
    assert request.body == b"value=1" and request.header("Content-Length") == "7"
    assert request.header("Transfer-Encoding") is None


# --- keep-alive, HTTP/1.0, pipelining, Expect ---------------------------------------


def test_http10_without_keepalive_is_answered_then_closed(member):
    with proxy_stack(member.url) as (port, _server):
        answer = exchange(port, b"GET /v2/keys/a HTTP/1.0\r\n\r\n", half_close=False)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close" in head
    assert body == member.body
    assert member.requests[0].header("Host") == member.url[len("http://"):]


def test_http10_keepalive_keeps_the_connection(member):
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /v2/keys/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, fields, body = reader.response()
            assert (status, fields.get("connection"), body) == (200, "keep-alive", member.body)
        sock.close()
    assert len(member.requests) == 2


def test_pipelined_requests_are_answered_in_order(member):
    member.behaviour = lambda req: Reply(body=req.target.encode())
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        sock.sendall(b"".join(b"GET /v2/keys/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                              for i in range(5)) + PUT + b"Content-Length: 7\r\n\r\nvalue=1")
        reader = Reader(sock)
        bodies = [reader.response()[2] for _ in range(6)]
        sock.close()
    assert bodies == [b"/v2/keys/%d" % i for i in range(5)] + [b"/v2/keys/k"]
    assert member.requests[-1].body == b"value=1"


def test_expect_100_continue_is_answered_when_the_body_is_read(member):
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        sock.sendall(PUT + b"Expect: 100-continue\r\nContent-Length: 7\r\n\r\n")
        reader = Reader(sock)
        assert reader.head() == (100, [])
        sock.sendall(b"value=1")
        status, fields, _body = reader.response()
        assert status == 200
        sock.close()
    (request,) = member.requests
    assert request.body == b"value=1" and request.header("Expect") is None


def test_expect_100_continue_never_sent_when_the_request_is_refused():
    with proxy_stack("http://127.0.0.1:9", readonly=True) as (port, _server):
        sock = connect(port)
        sock.sendall(PUT + b"Expect: 100-continue\r\nContent-Length: 7\r\n\r\n")
        status, _fields, _body = Reader(sock).response()
        sock.close()
    assert status == 501


@pytest.mark.parametrize("status", [204, 304])
def test_keepalive_after_answers_without_a_body(member, status):
    member.behaviour = lambda req: Reply(status=status, body=b"", content_type=None) \
        if req.target == "/first" else Reply()
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == status
        assert reader.response()[::2] == (200, member.body)
        sock.close()


def test_keepalive_after_head(member):
    with proxy_stack(member.url) as (port, _server):
        sock = connect(port)
        sock.sendall(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        status, fields, body = reader.response("HEAD")
        assert (status, body, fields["content-length"]) == (200, b"", str(len(member.body)))
        assert reader.response()[::2] == (200, member.body)
        sock.close()


# --- streaming answers of unknown length ------------------------------------------


class SlowChunks:
    """A member whose answer is chunked and sent one chunk per ``step.set()``."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.step = Event()
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.address[1]

    def handle(self, sock, _address):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for chunk in self.chunks:
            self.step.wait(10)
            self.step.clear()
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        sock.close()

    def close(self):
        self.server.stop(timeout=1)


def test_non_watch_chunked_answer_reaches_the_client_chunk_by_chunk():
    member = SlowChunks([b"first", b"second", b"third"])
    try:
        with proxy_stack(member.url) as (port, _server):
            sock = connect(port)
            sock.sendall(b"GET /v2/stats/self HTTP/1.1\r\nHost: x\r\n\r\n")
            reader = Reader(sock)
            status, fields = reader.head()
            assert status == 200 and ("transfer-encoding", "chunked") in fields
            for chunk in member.chunks:  # each arrives before the member sends the next
                member.step.set()
                assert reader.chunk() == chunk
            member.step.set()
            assert reader.chunk() == b""
            sock.close()
    finally:
        member.close()


# --- slow clients -------------------------------------------------------------------


def test_slow_head_is_closed_after_the_header_timeout_while_others_are_served(member):
    with proxy_stack(member.url, header_timeout=0.5) as (port, _server):
        slow = connect(port)
        slow.sendall(b"GET /v2/keys/slow HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        for _ in range(20):  # meanwhile ordinary clients are served at once
            begun = time.monotonic()
            assert status_of(exchange(port, b"GET /v2/keys/fast HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n")) == 200
            assert time.monotonic() - begun < 0.5
        slow.settimeout(5.0)
        assert slow.recv(65536) == b""  # closed, without an answer
        waited = time.monotonic() - started
        slow.close()
    assert 0.3 < waited < 3.0
    assert all(r.target == "/v2/keys/fast" for r in member.requests)


def test_idle_keepalive_connection_is_closed_after_the_idle_timeout(member):
    with proxy_stack(member.url, idle_timeout=0.3) as (port, _server):
        sock = connect(port)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 200
        started = time.monotonic()
        with pytest.raises(EOFError):
            reader.response()
        assert 0.2 < time.monotonic() - started < 3.0
        sock.close()


def test_stalled_body_is_cut_after_the_header_timeout(member):
    with proxy_stack(member.url, header_timeout=0.3) as (port, _server):
        sock = connect(port)
        sock.sendall(PUT + b"Content-Length: 7\r\n\r\nval")  # the rest never comes
        sock.settimeout(5.0)
        assert sock.recv(65536) == b""
        sock.close()
    assert member.requests == []


def test_a_client_that_leaves_mid_request_does_not_disturb_the_server(member):
    with proxy_stack(member.url) as (port, _server):
        for cut in range(1, 40, 3):
            sock = connect(port)
            sock.sendall((PUT + b"Content-Length: 7\r\n\r\nvalue=1")[:cut])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()  # a reset
        assert status_of(exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n")) == 200
    assert [r.target for r in member.requests] == ["/ok"]


# --- idle connections without a greenlet ------------------------------------------


@pytest.fixture
def quick_park(monkeypatch):
    from geproxy import handler
    monkeypatch.setattr(handler, "PARK_AFTER", 0.05)


def test_idle_connection_parks_and_its_next_request_is_served(member, quick_park):
    with proxy_stack(member.url) as (port, proxy):
        server = proxy.servers[0]
        sock = connect(port)
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.response()[::2] == (200, member.body)
            assert poll(lambda: len(server.parked) == 1, timeout=5.0)
            assert server.gate.open == 1  # a parked connection still counts
        sock.close()
        assert poll(lambda: not server.parked and server.gate.open == 0, timeout=5.0)
    assert len(member.requests) == 3


def test_parked_connection_is_closed_after_the_idle_timeout(member, quick_park):
    with proxy_stack(member.url, idle_timeout=0.3) as (port, proxy):
        sock = connect(port)
        reader = Reader(sock)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[0] == 200
        started = time.monotonic()
        with pytest.raises(EOFError):
            reader.response()
        assert 0.2 < time.monotonic() - started < 3.0
        assert not proxy.servers[0].parked
        sock.close()


def test_drain_closes_parked_connections_at_once(member, quick_park):
    with proxy_stack(member.url) as (port, proxy):
        server = proxy.servers[0]
        socks = [connect(port) for _ in range(5)]
        for sock in socks:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(sock).response()[0] == 200
        assert poll(lambda: len(server.parked) == 5, timeout=5.0)
        server.drain()
        for sock in socks:
            assert sock.recv(65536) == b""
            sock.close()
        assert server.gate.open == 0
