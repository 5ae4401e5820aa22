"""Pipelined reads (geproxy.pipeline): GETs of keys share a few connections per member,
each client still gets its own answer, and whatever breaks a pipe only sends the reads
behind it elsewhere, never loses or mixes one up."""

import time

import gevent
import pytest
from gevent.pool import Pool

from geproxy import pipeline
from geproxy.client import NativeTransport
from geproxy.errors import MemberTimeout, PipeBroken
from geproxy.testing.procfs import established
from tests.fakeupstream import FakeMember, Reply
from tests.helpers import session

PIPES = 2


def echo(request):
    """Each answer names its request, so an answer given to the wrong request shows."""
    return Reply(body=request.target.encode())


def read_all(transport, url, targets, concurrency, head_timeout=5.0):
    """{target: body or the exception} for GETs of ``targets`` from ``concurrency`` greenlets."""
    answers = {}

    def one(target):
        try:
            resp = transport.request(url, "GET", target, [("Host", "m")], b"", head_timeout)
            answers[target] = b"".join(resp.stream())
        except Exception as exc:  # recorded for the assertion, not swallowed
            answers[target] = exc

    pool = Pool(concurrency)
    for target in targets:
        pool.spawn(one, target)
    pool.join(timeout=60, raise_error=True)
    return answers


def reads_through(member, pipelines, targets, concurrency):
    """read_all through a new NativeTransport; the transport and the member are closed after."""
    transport = NativeTransport(pipelines=pipelines)
    try:
        return read_all(transport, member.url, targets, concurrency)
    finally:
        transport.close()
        member.close()


@pytest.mark.parametrize("method,target,body,expected", [
    ("GET", "/v2/keys/a", b"", True),
    ("GET", "/v2/keys/a/b?recursive=true&sorted=true", b"", True),
    ("GET", "/v2/keys/a?wait=true", b"", False),  # a watch waits for a change
    ("GET", "/v2/keys/a?waitIndex=7&wait=true", b"", False),
    ("GET", "/v2/keys/a?quorum=true", b"", False),  # waits for raft
    ("GET", "/v2/members", b"", False),
    ("GET", "/version", b"", False),
    ("HEAD", "/v2/keys/a", b"", False),
    ("PUT", "/v2/keys/a", b"value=1", False),
    ("POST", "/v2/keys/a", b"value=1", False),
    ("DELETE", "/v2/keys/a", b"", False),
    ("GET", "/v2/keys/a", b"x", False),
])
def test_only_plain_reads_of_keys_are_pipelined(method, target, body, expected):
    assert pipeline.suits(method, target, body) is expected


def test_concurrent_reads_share_the_pipes_and_each_gets_its_own_answer():
    member = FakeMember(behaviour=echo)
    targets = ["/v2/keys/k%d" % i for i in range(600)]
    answers = reads_through(member, PIPES, targets, 60)
    assert answers == {t: t.encode() for t in targets}
    assert member.connections <= PIPES
    assert sorted(r.target for r in member.requests) == sorted(targets)  # each sent once


def test_without_pipelines_each_read_in_flight_has_a_connection():
    """The control for the test above: the same load opens many more connections."""
    member = FakeMember(behaviour=echo)
    targets = ["/v2/keys/k%d" % i for i in range(200)]
    answers = reads_through(member, 0, targets, 60)
    assert answers == {t: t.encode() for t in targets}
    assert member.connections > PIPES


def test_a_member_closing_a_pipe_midway_loses_no_read():
    """Each connection answers 5 requests, then reads a 6th and closes without an
    answer: that one and the reads behind it are sent again and answered."""
    member = FakeMember(behaviour=echo, drop_after=5)
    targets = ["/v2/keys/d%d" % i for i in range(300)]
    answers = reads_through(member, PIPES, targets, 40)
    assert answers == {t: t.encode() for t in targets}
    assert len(member.dropped) >= 10
    counts = {}
    for request in member.requests:
        counts[request.target] = counts.get(request.target, 0) + 1
    assert set(counts) == set(targets)
    assert all(counts[r.target] >= 2 for r in member.dropped)  # sent again after the drop
    assert sum(counts.values()) == len(targets) + len(member.dropped)  # and nothing else


def test_an_answer_without_a_length_is_streamed_and_the_reads_behind_it_go_elsewhere():
    pieces = [b"x" * 1000, b"y" * 1000, b"z" * 1000]

    def mixed(request):
        if request.target.startswith("/v2/keys/big"):
            return Reply(body=pieces, chunked=True)
        return echo(request)

    member = FakeMember(behaviour=mixed)
    targets = ["/v2/keys/%s%d" % ("big" if i % 25 == 0 else "s", i) for i in range(300)]
    answers = reads_through(member, PIPES, targets, 40)
    assert answers == {t: b"".join(pieces) if "big" in t else t.encode() for t in targets}


def test_a_stalled_answer_sends_the_reads_behind_it_elsewhere():
    """The member holds one read past the head timeout: that one fails (the app then
    tries another member), the reads behind it on its pipe are answered at once."""
    def stall(request):
        if request.target == "/v2/keys/slow":
            gevent.sleep(2.0)
        return echo(request)

    member = FakeMember(behaviour=stall)
    transport = NativeTransport(pipelines=1)
    try:
        slow = gevent.spawn(read_all, transport, member.url, ["/v2/keys/slow"], 1, 0.5)
        gevent.sleep(0.05)  # the slow read is first in line on the one pipe
        began = time.monotonic()
        answers = read_all(transport, member.url, ["/v2/keys/f%d" % i for i in range(20)], 20)
        took = time.monotonic() - began
        slow_answer = slow.get(timeout=10)["/v2/keys/slow"]
    finally:
        transport.close()
        member.close()
    assert isinstance(slow_answer, MemberTimeout)
    assert answers == {"/v2/keys/f%d" % i: b"/v2/keys/f%d" % i for i in range(20)}
    assert took < 1.5


@pytest.mark.parametrize("workers", [1, 2])
def test_reads_through_a_proxy_share_the_pipes_of_real_members(cluster, start_proxy, key,
                                                               workers):
    """Real etcd answers pipelined GETs in order: 400 reads of 40 keys, each value its
    key's, over at most two connections per member from the whole proxy, with one
    worker or two.

    The keys are written straight to a member: a write through the proxy makes it ask
    a member for the leader again, on a connection of its own that would count here
    if it came during the reads."""
    proxy = start_proxy(cluster.initial_cluster, args=["--workers", str(workers)],
                        endpoints=len(cluster.members))
    keys = ["%s/k%d" % (key, i) for i in range(40)]
    with session() as http:
        for k in keys:
            assert http.put(cluster.client_urls[0] + k, data={"value": k}).status_code == 201
    ports = [int(u.rsplit(":", 1)[1]) for u in cluster.client_urls]
    values = {}
    peak = []

    def reader(i):
        with session() as http:
            for j in range(10):
                k = keys[(i + j) % len(keys)]
                values.setdefault(k, set()).add(http.get(proxy.url + k).json()["node"]["value"])
                peak.append(tuple(established(proxy.pid, ports)))  # per member

    pool = Pool(40)
    for i in range(40):
        pool.spawn(reader, i)
    pool.join(timeout=60, raise_error=True)
    assert values == {k: {k} for k in keys}
    assert max(max(sample) for sample in peak) <= PIPES, sorted(set(peak))


class StubPool:
    """Just enough of geproxy.pool.Pool for a Pipe: hands out StubWires, counts discards."""

    base_url = "http://stub"

    def __init__(self):
        self.discarded = []

    def get(self, check):
        return StubWire(), False

    def discard(self, wire):
        self.discarded.append(wire)


class StubWire:
    def __init__(self):
        self.sent = []

    def send_all(self, data, timeout=None):
        self.sent.append(data)

    def ready(self):
        return None


def test_a_turn_given_just_before_the_pipe_ended_is_not_taken():
    """The answer ahead is done (the next one's turn is scheduled), then the pipe ends
    before that greenlet runs: it must not read from the closed connection."""
    pool = StubPool()
    pipe = pipeline.Pipe(pool)
    first = pipe.submit(b"GET /a", 1.0)
    second = pipe.submit(b"GET /b", 1.0)
    assert first[1] and not second[1]
    wire = pipe.wire
    assert wire.sent == [b"GET /a", b"GET /b"]
    pipe.wait_turn(*first)
    waiting = gevent.spawn(pipe.wait_turn, *second)
    gevent.sleep(0)  # the second one waits for its turn
    pipe.release(wire, True, b"")  # its turn is scheduled...
    pipe.kill()  # ...and the pipe ends before it runs
    with pytest.raises(PipeBroken):
        waiting.get(timeout=5)
    assert pool.discarded == [wire]


def test_answers_are_handed_on_in_the_order_sent():
    pool = StubPool()
    pipe = pipeline.Pipe(pool)
    tickets = [pipe.submit(b"GET /%d" % i, 1.0) for i in range(5)]
    turns = []

    def reader(i):
        pipe.wait_turn(*tickets[i])
        turns.append(i)
        pipe.release(pipe.wire, True, b"left %d" % i)

    greenlets = [gevent.spawn(reader, i) for i in (4, 2, 0, 3, 1)]
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    assert turns == [0, 1, 2, 3, 4]
    assert pipe.buf == b"left 4" and not pipe.order and not pool.discarded


def test_a_read_killed_while_in_line_does_not_stall_the_ones_behind_it():
    pool = StubPool()
    pipe = pipeline.Pipe(pool)
    tickets = [pipe.submit(b"GET /%d" % i, 1.0) for i in range(3)]
    pipe.wait_turn(*tickets[0])
    second = gevent.spawn(pipe.wait_turn, *tickets[1])
    third = gevent.spawn(pipe.wait_turn, *tickets[2])
    gevent.sleep(0)
    second.kill()  # e.g. the server stopping: its answer will never be read
    pipe.release(pipe.wire, True, b"")
    with pytest.raises(PipeBroken):  # sent elsewhere, not left waiting for a turn
        third.get(timeout=5)


def test_a_target_answered_without_a_length_keeps_to_its_own_connections():
    """etcd sends any answer over 2 KiB chunked; each one ends its pipe and sends the
    reads behind it again, so a big listing read again and again is not pipelined."""
    pieces = [b"x" * 3000]

    def mixed(request):
        if request.target == "/v2/keys/dir?recursive=true":
            return Reply(body=pieces, chunked=True)
        return echo(request)

    member = FakeMember(behaviour=mixed)
    transport = NativeTransport(pipelines=PIPES)
    try:
        first = read_all(transport, member.url, ["/v2/keys/dir?recursive=true"], 1)
        assert first == {"/v2/keys/dir?recursive=true": pieces[0]}
        member.requests.clear()
        pool = Pool(60)
        answers = []
        for i in range(300):
            target = "/v2/keys/dir?recursive=true" if i % 3 == 0 else "/v2/keys/s%d" % i
            pool.spawn(lambda t=target: answers.append(
                (t, read_all(transport, member.url, [t], 1)[t])))
        pool.join(timeout=60, raise_error=True)
    finally:
        transport.close()
        member.close()
    assert len(answers) == 300
    assert all(body == (pieces[0] if "dir" in t else t.encode()) for t, body in answers)
    assert len(member.requests) == 300  # none sent twice: no pipe ended under the others


def test_reads_behind_a_hung_member_fail_within_one_head_timeout():
    """The member answers nothing: the read at the head of the pipe times out, and the
    ones behind it, sent again on their own connections, have only what is left of their
    head timeout there, so each fails (and the app moves on) one head timeout after it
    was sent, not two."""
    def hang(request):
        gevent.sleep(3.0)
        return echo(request)

    member = FakeMember(behaviour=hang)
    transport = NativeTransport(pipelines=1)
    failed_after = []

    def one(target):
        began = time.monotonic()
        try:
            transport.request(member.url, "GET", target, [("Host", "m")], b"", 0.5)
        except MemberTimeout:
            failed_after.append(time.monotonic() - began)

    try:
        pool = Pool(10)
        for i in range(10):
            pool.spawn(one, "/v2/keys/h%d" % i)
        pool.join(timeout=30, raise_error=True)
    finally:
        transport.close()
        member.close()
    assert len(failed_after) == 10
    assert max(failed_after) < 0.9, sorted(failed_after)
