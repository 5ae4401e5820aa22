"""HeadMemo: a head seen again is not parsed again, and sharing one parse between
requests (or member answers) changes nothing any of them carries."""

import pytest
from gevent.server import StreamServer

from geproxy import http11
from geproxy.errors import BadRequest
from geproxy.handler import environ_entries
from tests.fakeupstream import FakeMember, Reply
from geproxy.testing.rawhttp import Reader
from tests.inproc import connect, exchange, proxy_stack

GET = b"GET /v2/keys/a HTTP/1.1\r\nHost: x"


class Counting:
    """parse_request over bytes, noting each head it was asked to parse."""

    def __init__(self):
        self.parsed = []

    def __call__(self, head):
        self.parsed.append(head)
        return http11.parse_request(head.decode("latin-1"))


def test_a_head_seen_again_is_not_parsed_again():
    parse = Counting()
    memo = http11.HeadMemo(parse)
    first = memo(GET)
    again = memo(bytes(bytearray(GET)))  # an equal head in a buffer of its own
    assert again is first
    assert parse.parsed == [GET]
    assert (first.method, first.target, first.headers) == ("GET", "/v2/keys/a", [("Host", "x")])
    assert first is not http11.parse_request(GET.decode("latin-1"))  # a parse of its own


def test_a_head_that_fails_raises_each_time_and_is_not_kept():
    parse = Counting()
    memo = http11.HeadMemo(parse)
    bad = b"GET /a HTTP/1.1\r\nHost : x"
    for _ in range(2):
        with pytest.raises(BadRequest):
            memo(bad)
    assert parse.parsed == [bad, bad]
    assert memo.heads == {}


def test_at_most_size_heads_are_kept_and_the_oldest_goes_first():
    parse = Counting()
    memo = http11.HeadMemo(parse, size=2)
    heads = [b"GET /%d HTTP/1.1\r\nHost: x" % i for i in range(3)]
    for head in heads:
        memo(head)
    assert list(memo.heads) == heads[1:]
    memo(heads[0])  # dropped: parsed again
    assert parse.parsed == heads + heads[:1]


def test_a_head_longer_than_longest_is_parsed_every_time():
    parse = Counting()
    memo = http11.HeadMemo(parse, longest=len(GET) - 1)
    memo(GET)
    memo(GET)
    assert parse.parsed == [GET, GET]
    assert memo.heads == {}


def test_the_environ_entries_of_a_request_head():
    req = http11.parse_request("POST /v2/keys/a%2Fb?x=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n"
                               "x-a: 2\r\nContent-Type: text/plain\r\nContent-Length: 3")
    assert environ_entries(req) == {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/v2/keys/a/b", "QUERY_STRING": "x=1",
        "RAW_URI": "/v2/keys/a%2Fb?x=1", "REQUEST_URI": "/v2/keys/a%2Fb?x=1",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "x", "HTTP_X_A": "1,2",
        "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "3"}


def test_identical_heads_with_different_bodies_each_arrive_as_sent():
    """Three PUTs with the same head and their own bodies on one connection; the member
    echoes each body under identical answer heads: every body reaches the member and
    comes back to the client in order, each its own."""
    with FakeMember(behaviour=lambda request: Reply(body=request.body)) as member, \
            proxy_stack(member.url) as (port, _server):
        raw = b"".join(b"PUT /v2/keys/k HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n\r\nvalue=%d" % i
                       for i in range(3))
        answer = exchange(port, raw)
    assert [request.body for request in member.requests] == [b"value=0", b"value=1",
                                                             b"value=2"]
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert answer.index(b"\r\n\r\nvalue=0") < answer.index(b"\r\n\r\nvalue=1") \
        < answer.index(b"\r\n\r\nvalue=2")


class ReadToClose:
    """A member whose every answer has the same head, no length, and ends with the
    connection; it counts the connections it took."""

    def __init__(self):
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.address[1]

    def handle(self, sock, _address):
        self.connections += 1
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nanswer %d"
                     % self.connections)
        sock.close()

    def close(self):
        self.server.stop(timeout=1)


def test_answers_read_to_their_close_under_one_head_each_take_their_own_connection():
    member = ReadToClose()
    try:
        with proxy_stack(member.url) as (port, server):
            pool = server.app.transport.pool(member.url)
            sock = connect(port)
            reader = Reader(sock)
            for n in (1, 2, 3):
                sock.sendall(b"GET /v2/stats/self HTTP/1.1\r\nHost: x\r\n\r\n")
                status, fields = reader.head()
                assert status == 200 and ("transfer-encoding", "chunked") in fields
                assert reader.chunk() == b"answer %d" % n
                assert reader.chunk() == b""
                assert pool.idle == []  # the ended connection was not pooled
            sock.close()
        assert member.connections == 3
    finally:
        member.close()
