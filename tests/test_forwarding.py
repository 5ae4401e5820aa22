"""Forwarding through a real proxy process to a real 3-member etcd cluster.

Each answer through the proxy is compared with what a member says directly.
"""

import json
import re
import socket
import time

import gevent
import pytest
from gevent.queue import Queue

from tests.helpers import poll, session, settled_watchers, watchers

ETCD_HEADERS = ("X-Etcd-Index", "X-Etcd-Cluster-Id", "Content-Type")


def direct_matches(http, cluster, path, expected):
    """True once every member answers ``path`` with the proxy's body and X-Etcd-* headers."""
    def all_match():
        for url in cluster.client_urls:
            r = http.get(url + path)
            if r.status_code != expected.status_code or r.content != expected.content:
                return False
            if any(r.headers.get(h) != expected.headers.get(h) for h in ETCD_HEADERS):
                return False
        return True
    return poll(all_match)


def test_set_get_delete_match_direct(http, cluster, proxy, key):
    r = http.put(proxy.url + key, data={"value": "bar"})
    assert r.status_code == 201
    assert r.json()["node"]["value"] == "bar"
    assert r.headers["X-Etcd-Index"] == str(r.json()["node"]["modifiedIndex"])

    got = http.get(proxy.url + key)
    assert got.status_code == 200 and got.json()["node"]["value"] == "bar"
    assert direct_matches(http, cluster, key, got)

    deleted = http.delete(proxy.url + key)
    assert deleted.status_code == 200 and deleted.json()["action"] == "delete"
    missing = http.get(proxy.url + key)
    assert missing.status_code == 404 and missing.json()["errorCode"] == 100
    assert direct_matches(http, cluster, key, missing)


def test_in_order_post_creates_sorted_keys(http, proxy, key):
    created = [http.post(proxy.url + key, data={"value": v}) for v in ("a", "b", "c")]
    assert [r.status_code for r in created] == [201, 201, 201]
    indexes = [r.json()["node"]["createdIndex"] for r in created]
    assert indexes == sorted(indexes)
    listing = http.get(proxy.url + key, params={"sorted": "true", "recursive": "true"})
    assert [n["value"] for n in listing.json()["node"]["nodes"]] == ["a", "b", "c"]


def test_compare_and_swap(http, proxy, key):
    http.put(proxy.url + key, data={"value": "one"})
    refused = http.put(proxy.url + key, data={"value": "two", "prevValue": "wrong"})
    assert refused.status_code == 412
    assert refused.json()["errorCode"] == 101
    swapped = http.put(proxy.url + key, data={"value": "two", "prevValue": "one"})
    assert swapped.status_code == 200
    assert swapped.json()["action"] == "compareAndSwap"
    assert swapped.json()["prevNode"]["value"] == "one"


def test_directory_listing_matches_direct(http, cluster, proxy, key):
    assert http.put(proxy.url + key, data={"dir": "true"}).status_code == 201
    for name in ("x", "y"):
        http.put(proxy.url + key + "/" + name, data={"value": name})
    listing = http.get(proxy.url + key, params={"sorted": "true"})
    assert listing.status_code == 200
    assert [n["key"].rsplit("/", 1)[1] for n in listing.json()["node"]["nodes"]] == ["x", "y"]
    assert direct_matches(http, cluster, key + "?sorted=true", listing)


def test_long_poll_watch_gets_headers_early_then_the_event(http, proxy, key):
    first = http.put(proxy.url + key, data={"value": "0"})
    with http.get(proxy.url + key, params={"wait": "true"}, stream=True, timeout=10) as watch:
        # headers arrived before any event: etcd flushes them and so do we
        assert watch.status_code == 200
        assert int(watch.headers["X-Etcd-Index"]) >= first.json()["node"]["modifiedIndex"]
        http.put(proxy.url + key, data={"value": "1"})
        event = json.loads(watch.raw.read())
    assert event["action"] == "set" and event["node"]["value"] == "1"


def test_wait_index_watch_returns_past_event(http, proxy, key):
    r1 = http.put(proxy.url + key, data={"value": "v1"})
    http.put(proxy.url + key, data={"value": "v2"})
    index = r1.json()["node"]["modifiedIndex"]
    r = http.get(proxy.url + key, params={"wait": "true", "waitIndex": index}, timeout=10)
    assert r.status_code == 200
    assert r.json()["node"]["value"] == "v1"
    assert r.json()["node"]["modifiedIndex"] == index


def test_stream_watch_delivers_each_event_as_it_happens(http, proxy, key):
    http.put(proxy.url + key, data={"value": "start"})
    lines = Queue()
    resp = http.get(proxy.url + key, params={"wait": "true", "stream": "true"},
                    stream=True, timeout=30)
    assert resp.status_code == 200

    def reader():
        for line in resp.iter_lines():
            if line:
                lines.put(json.loads(line))

    g = gevent.spawn(reader)
    try:
        for value in ("e1", "e2", "e3"):
            http.put(proxy.url + key, data={"value": value})
            # each event arrives while the stream is still open, before the next PUT
            event = lines.get(timeout=5)
            assert event["node"]["value"] == value
        assert not g.dead, "the stream ended; events must arrive while it stays open"
    finally:
        g.kill()
        resp.close()


@pytest.mark.parametrize("query", ["wait=true", "wait=true&stream=true"])
def test_client_disconnect_frees_member_watcher(cluster, proxy, key, query):
    base = settled_watchers(cluster)  # earlier tests' watches are gone
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        sock.sendall(("GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (key, query)).encode())
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # headers flushed early
        assert poll(lambda: watchers(cluster) == base + 1)
    finally:
        sock.close()
    closed_at = time.monotonic()
    assert poll(lambda: watchers(cluster) == base, timeout=3.0)
    assert time.monotonic() - closed_at < 1.5


def test_readonly_forwards_get_and_refuses_writes(http, cluster, proxy, readonly_proxy, key):
    http.put(proxy.url + key, data={"value": "kept"})
    got = http.get(readonly_proxy.url + key, params={"quorum": "true"})  # a follower may lag
    assert got.status_code == 200 and got.json()["node"]["value"] == "kept"
    for method in ("PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        body = {"value": "changed"} if method in ("PUT", "POST", "PATCH") else None
        r = http.request(method, readonly_proxy.url + key, data=body)
        assert (r.status_code, r.content) == (501, b""), method
        assert r.headers["Content-Length"] == "0"
    direct = http.get(cluster.client_urls[0] + key, params={"quorum": "true"})
    assert direct.json()["node"]["value"] == "kept"
    created = http.get(cluster.client_urls[0] + key + "x")
    assert created.status_code == 404


def test_member_list_passes_through(http, cluster, proxy):
    r = http.get(proxy.url + "/v2/members")
    assert r.status_code == 200
    urls = sorted(u for m in r.json()["members"] for u in m["clientURLs"])
    assert urls == sorted(cluster.client_urls)


def test_local_config_lists_every_member(http, cluster, proxy):
    r = http.get(proxy.url + "/v2/config/local/proxy")
    assert r.status_code == 200
    assert sorted(r.json()["endpoints"]) == sorted(cluster.client_urls)


def sent_to_members(proxy):
    """Requests the proxy has sent to each member so far, from its /metrics."""
    text = session().get(proxy.url + "/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^geproxy_member_requests_total\{member="([^"]+)"\} (\S+)$', text, re.M)}


def test_writes_go_to_the_leader_and_the_writing_connection_reads_there(cluster, proxy, key):
    """A connection whose reads went to a follower writes: its PUTs, and its GETs from
    then on, go to the leader (which named itself to the proxy's refresh), and each
    GET sees the PUT before it."""
    leader = [url for url in cluster.client_urls
              if session().get(url + "/v2/stats/self").json()["state"] == "StateLeader"]
    assert len(leader) == 1
    assert session().put(proxy.url + key, data={"value": "start"}).status_code in (200, 201)
    conns = []
    try:
        for _ in range(10):  # least-connections binds new connections round the members
            conn = session()
            conns.append(conn)
            before = sent_to_members(proxy)
            assert conn.get(proxy.url + key).status_code == 200
            after = sent_to_members(proxy)
            if all(after.get(url, 0) == before.get(url, 0) for url in leader):
                break  # this one reads from a follower
        else:
            pytest.fail("ten new connections all read from the leader")
        before = after
        for i in range(2):
            assert conn.put(proxy.url + key, data={"value": str(i)}).status_code == 200
            assert conn.get(proxy.url + key).json()["node"]["value"] == str(i)
        after = sent_to_members(proxy)
    finally:
        for conn in conns:
            conn.close()
    grew = {url: after.get(url, 0) - before.get(url, 0) for url in cluster.client_urls}
    assert grew == {url: 4 if url in leader else 0 for url in cluster.client_urls}
