"""Membership and endpoint choice in-process, against a fake peer that serves /members.

A fake peer is used where real etcd cannot show the case: a peer that answers
garbage, an empty member list, a member advertising the proxy's own address.
"""

import json

import gevent
import pytest
from gevent import pywsgi

from geproxy.datadir import ClusterFile
from geproxy.endpoints import Binding, EndpointSet
from geproxy.membership import FAST_RETRY, Membership, SelfAddresses
from tests.fakeupstream import CLUSTER_ID, FakeMember
from tests.helpers import poll, session


class FakePeer:
    """Answers GET /members with whatever ``answer`` holds: (headers, body bytes)."""

    def __init__(self):
        self.answer = ({"X-Etcd-Cluster-ID": CLUSTER_ID}, b"[]")
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_port

    def members(self, *members):
        self.answer = ({"X-Etcd-Cluster-ID": CLUSTER_ID},
                       json.dumps([{"id": 1, "name": name, "peerURLs": peers,
                                    "clientURLs": clients} for name, peers, clients in members])
                       .encode())

    def app(self, environ, start_response):
        headers, body = self.answer
        start_response("200 OK", list(headers.items()) + [("Content-Type", "application/json")])
        return [body]

    def close(self):
        self.server.stop()


@pytest.fixture
def peer():
    p = FakePeer()
    yield p
    p.close()


def membership(peer_urls, endpoints=None, interval=30.0, **kw):
    eps = endpoints or EndpointSet(failure_wait=5.0)
    m = Membership(lambda: peer_urls, eps, refresh_interval=interval, dial_timeout=1.0, **kw)
    m.peer_urls = sorted(peer_urls)
    return m


def test_refresh_takes_client_urls_and_follows_peer_urls(peer):
    peer.members(("a", [peer.url], ["http://127.0.0.1:1"]),
                 ("b", [peer.url + "0"], ["http://127.0.0.1:2"]))
    m = membership([peer.url])
    assert m.refresh()
    assert sorted(ep.url for ep in m.endpoints.available()) == ["http://127.0.0.1:1",
                                                                "http://127.0.0.1:2"]
    assert m.peer_urls == sorted([peer.url, peer.url + "0"])


@pytest.mark.parametrize("answer", [
    ({"X-Etcd-Cluster-ID": CLUSTER_ID}, b"not json"),
    ({"X-Etcd-Cluster-ID": CLUSTER_ID}, b'{"members": []}'),
    ({}, b'[{"clientURLs": ["http://127.0.0.1:9"]}]'),
    ({"X-Etcd-Cluster-ID": CLUSTER_ID}, b"[]"),
], ids=["garbage", "not-an-array", "no-cluster-id", "empty-list"])
def test_failed_or_empty_read_keeps_last_good_endpoints(peer, answer):
    peer.members(("a", [peer.url], ["http://127.0.0.1:1"]))
    m = membership([peer.url])
    assert m.refresh()
    peer.answer = answer
    assert not m.refresh()
    assert [ep.url for ep in m.endpoints.available()] == ["http://127.0.0.1:1"]
    assert m.status()["lastRefresh"]["ok"] is False


def test_unreachable_peer_is_skipped_for_the_next(peer):
    peer.members(("a", [peer.url], ["http://127.0.0.1:1"]))
    m = membership(["http://127.0.0.1:1", peer.url])  # the first refuses connections
    assert m.refresh()
    assert [ep.url for ep in m.endpoints.available()] == ["http://127.0.0.1:1"]


def test_failure_marks_survive_a_refresh(peer):
    peer.members(("a", [peer.url], ["http://127.0.0.1:1", "http://127.0.0.1:2"]))
    m = membership([peer.url])
    m.refresh()
    failed = [ep for ep in m.endpoints.all() if ep.url == "http://127.0.0.1:1"][0]
    m.endpoints.mark_failed(failed)
    m.refresh()
    assert [ep.url for ep in m.endpoints.available()] == ["http://127.0.0.1:2"]
    assert [f["endpoint"] for f in m.status()["failed"]] == ["http://127.0.0.1:1"]


def test_own_listen_address_is_skipped(peer):
    """A member advertising the proxy's own address would make it forward to itself."""
    peer.members(("a", [peer.url], ["http://localhost:2379", "http://127.0.0.1:2"]))
    m = membership([peer.url], self_addresses=SelfAddresses([("0.0.0.0", 2379)]))
    assert m.refresh()
    assert [ep.url for ep in m.endpoints.available()] == ["http://127.0.0.1:2"]


def test_self_addresses():
    own = SelfAddresses([("127.0.0.1", 8080)])
    assert "http://127.0.0.1:8080" in own
    assert "http://localhost:8080" in own
    assert "http://127.0.0.1:8081" not in own
    wildcard = SelfAddresses([("0.0.0.0", 2379)])
    assert "http://127.0.0.1:2379" in wildcard
    assert "http://127.0.0.1:2380" not in wildcard


def test_retry_after_one_second_while_nothing_is_known():
    m = membership(["http://127.0.0.1:1"], interval=30.0)
    assert m.next_delay() == FAST_RETRY
    m.endpoints.replace(["http://127.0.0.1:2"])
    assert m.next_delay() == 30.0
    short = membership(["http://127.0.0.1:1"], interval=0.5)
    assert short.next_delay() == 0.5  # as etcd: no shortcut below 30 s


def test_cluster_file_written_only_when_peers_change(peer, tmp_path):
    peer.members(("a", [peer.url], ["http://127.0.0.1:1"]))
    cf = ClusterFile(str(tmp_path))
    m = membership([peer.url], cluster_file=cf)
    m.refresh()
    assert cf.read() == [peer.url]
    mtime = (tmp_path / "proxy" / "cluster").stat().st_mtime_ns
    m.refresh()
    assert (tmp_path / "proxy" / "cluster").stat().st_mtime_ns == mtime


# --- endpoint choice ------------------------------------------------------------


def test_each_new_connection_binds_to_the_least_loaded_endpoint():
    eps = EndpointSet(failure_wait=5.0)
    eps.replace(["a", "b", "c"])
    bindings = [Binding() for _ in range(300)]
    for b in bindings:
        eps.ordered(b)
    counts = {ep.url: ep.bound for ep in eps.all()}
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_a_connection_stays_on_its_endpoint_until_it_fails():
    eps = EndpointSet(failure_wait=5.0)
    eps.replace(["a", "b", "c"])
    b = Binding()
    first = eps.ordered(b)[0]
    assert all(eps.ordered(b)[0] is first for _ in range(10))
    eps.mark_failed(first)
    moved = eps.ordered(b)
    assert moved[0] is not first and first not in moved
    assert first.bound == 0 and moved[0].bound == 1
    b.release()
    assert moved[0].bound == 0


def test_first_balance_is_the_go_behaviour():
    eps = EndpointSet(failure_wait=5.0, balance="first")
    eps.replace(["a", "b", "c"])
    heads = {eps.ordered(Binding())[0].url for _ in range(20)}
    assert heads == {eps.all()[0].url}


def test_a_write_goes_to_the_leader_and_its_connection_stays_there():
    eps = EndpointSet(failure_wait=5.0)
    eps.replace(["a", "b", "c"], shuffle=False)
    eps.set_leader(["b"])
    reader, writer = Binding(), Binding()
    assert eps.ordered(reader)[0].url == "a"
    assert eps.ordered(writer)[0].url == "b"  # the least loaded (a has one)
    writer.bind(eps.all()[2])  # a connection on c ...
    assert [ep.url for ep in eps.ordered(writer, write=True)] == ["b", "a", "c"]
    assert eps.ordered(writer)[0].url == "b"  # ... reads where it wrote from then on
    assert {ep.url: ep.bound for ep in eps.all()} == {"a": 1, "b": 1, "c": 0}
    assert eps.ordered(reader)[0].url == "a"  # a connection that only reads stays put


def test_writes_go_where_reads_go_while_the_leader_is_unknown_or_failed():
    eps = EndpointSet(failure_wait=5.0)
    eps.replace(["a", "b", "c"], shuffle=False)
    conn = Binding()
    assert eps.ordered(conn, write=True)[0].url == "a"  # no leader known
    eps.set_leader(["b"])
    eps.mark_failed(eps.all()[1])
    assert eps.ordered(conn, write=True)[0].url == "a"
    first = EndpointSet(failure_wait=5.0, balance="first")
    first.replace(["a", "b", "c"], shuffle=False)
    first.set_leader(["b"])
    assert first.ordered(Binding(), write=True)[0].url == "a"  # as the Go proxy


def test_the_leader_is_doubted_after_a_higher_term_or_when_it_fails():
    eps = EndpointSet(failure_wait=5.0)
    eps.replace(["a", "b", "c"], shuffle=False)
    eps.set_leader(["b"])
    doubted = eps.leader_doubted
    eps.note_term(3)
    assert doubted.is_set() and eps.term == 3
    doubted.clear()
    for term in (3, 2, 0):
        eps.note_term(term)
    assert not doubted.is_set() and eps.term == 3
    eps.mark_failed(eps.all()[0])  # a follower
    assert not doubted.is_set()
    eps.mark_failed(eps.all()[1])  # the leader
    assert doubted.is_set()


def test_a_doubted_leader_is_asked_for_again_before_the_next_refresh():
    """Between refreshes ``wait`` asks again which member leads once the endpoints
    doubt the leader, at most once every RELEARN_GAP."""
    fake = FakeMember("ok")  # names itself the leader in /v2/stats/self
    try:
        m = membership([fake.url])
        assert m.refresh()
        m.endpoints.set_leader([])  # as if an election left it unknown
        waiting = gevent.spawn(m.wait, 30.0)
        try:
            m.endpoints.note_term(2)
            assert poll(lambda: m.endpoints.leader_urls == {fake.url}, timeout=5)
            assert not m.endpoints.leader_doubted.is_set()
            assert not waiting.dead  # still waiting for the next refresh
        finally:
            waiting.kill()
            m.stop()
    finally:
        fake.close()


def test_refresh_learns_the_leader_of_a_real_cluster(cluster):
    leader = [url for url in cluster.client_urls
              if session().get(url + "/v2/stats/self").json()["state"] == "StateLeader"]
    peers = [u.split("=", 1)[1] for u in cluster.initial_cluster.split(",")]
    m = membership(peers)
    try:
        assert m.refresh()
        assert m.endpoints.leader_urls == set(leader) and len(leader) == 1
        assert m.status()["leader"] == leader
    finally:
        m.stop()
