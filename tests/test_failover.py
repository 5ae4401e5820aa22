"""Failover against a real cluster whose members get killed, paused, added and removed.

Each test gets its own 3-member cluster (it breaks it) and a proxy with short
timers, so the behaviour shows within seconds.
"""

import json
import os
import stat
import time

import gevent
import pytest
import requests

from geproxy.testing import LocalCluster, ProxyProcess, free_port
from tests.helpers import poll, run_cli, sessions

FAST = ["--proxy-failure-wait", "1000", "--proxy-refresh-interval", "1000",
        "--proxy-header-timeout", "1000"]


@pytest.fixture
def fresh_cluster():
    with LocalCluster(size=3) as c:
        yield c


def bound_clients(cluster, proxy, key, first_write):
    """Three client connections after ``first_write`` to ``key``, and the member
    each is bound to (found from the members' own request counters)."""
    clients = sessions(3)
    clients[0].put(proxy.url + key, data=first_write)
    bound = []
    for client in clients:
        before = [m.metric("etcd_http_received_total", method="GET") for m in cluster.members]
        client.get(proxy.url + key)
        after = [m.metric("etcd_http_received_total", method="GET") for m in cluster.members]
        bound.append([i for i, (a, b) in enumerate(zip(before, after)) if b > a][0])
    return clients, bound


def run_gets(proxy, clients, key, count, on_request=None):
    """count sequential GETs spread over the clients; returns (failures, slowest seconds)."""
    failures, slowest = [], 0.0
    for n in range(count):
        if on_request:
            on_request(n)
        started = time.monotonic()
        try:
            r = clients[n % len(clients)].get(proxy.url + key, timeout=10)
            ok = r.status_code == 200
        except requests.RequestException as exc:
            ok, r = False, exc
        slowest = max(slowest, time.monotonic() - started)
        if not ok:
            failures.append((n, getattr(r, "status_code", r), getattr(r, "text", "")))
    return failures, slowest


def write_soon(proxy, key, timeout=15.0):
    """A write through the proxy succeeds once the cluster has a leader again."""
    client = sessions(1)[0]
    answers = []

    def attempt():
        r = client.put(proxy.url + key, data={"value": "after"}, timeout=10)
        answers.append(r.status_code)
        return r.status_code in (200, 201)

    assert poll(attempt, timeout, interval=0.2), answers
    return answers


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_kill_member_during_300_gets(fresh_cluster, start_proxy, key, role):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, args=FAST, endpoints=3)
    clients, bound = bound_clients(cluster, proxy, key, {"value": "v"})
    assert sorted(bound) == [0, 1, 2], "three connections spread over three members"
    leader = cluster.leader_index()
    victim = leader if role == "leader" else next(i for i in bound if i != leader)

    def kill_at_100(n):
        if n == 100:
            cluster.kill(victim)

    failures, slowest = run_gets(proxy, clients, key, 300, on_request=kill_at_100)
    print("killed %s m%d: 300 GETs, %d failures, slowest %.3f s"
          % (role, victim, len(failures), slowest))
    assert failures == []
    assert slowest < 2.0
    write_soon(proxy, key + "w")


def test_writes_follow_a_new_leader_long_before_the_next_refresh(fresh_cluster, start_proxy,
                                                                key):
    """The leader is killed.  Once the others elected one, writes through the proxy go to
    it within seconds, although the proxy re-reads the member list only every ten
    minutes: the failure and the new raft term in a write's answer make it ask again."""
    cluster = fresh_cluster
    args = ["--proxy-failure-wait", "1000", "--proxy-refresh-interval", "600000",
            "--proxy-header-timeout", "1000"]
    proxy = start_proxy(cluster.initial_cluster, args=args, endpoints=3)

    def leads(i):
        """The proxy names member i the leader, and i is not marked failed."""
        doc = requests.get(proxy.url + "/v2/config/local/proxy", timeout=5).json()
        return doc["leader"] == [cluster.client_urls[i]] and cluster.client_urls[i] in \
            doc["endpoints"]

    old = cluster.leader_index()
    assert poll(lambda: leads(old), timeout=10)
    cluster.kill(old)
    write_soon(proxy, key)
    new = cluster.leader_index()
    assert new != old
    assert poll(lambda: leads(new), timeout=10)  # a write to it may have timed out meanwhile
    alive = [i for i in range(3) if i != old]
    before = {i: cluster.members[i].metric("etcd_http_received_total", method="PUT")
              for i in alive}
    client = sessions(1)[0]
    for n in range(3):
        assert client.put(proxy.url + key, data={"value": str(n)}, timeout=10).status_code == 200
    grew = {i: cluster.members[i].metric("etcd_http_received_total", method="PUT") - before[i]
            for i in alive}
    assert grew == {i: 3 if i == new else 0 for i in alive}


def test_paused_member_gets_fail_over_and_puts_never_hang(fresh_cluster, start_proxy, key):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, args=FAST, endpoints=3)
    clients, bound = bound_clients(cluster, proxy, key, {"value": "v"})
    cluster.pause(bound[0])
    try:
        failures, slowest = run_gets(proxy, clients, key, 30)
        assert failures == []
        assert slowest < 2.0  # header bound 1 s, then the next member
        for n, client in enumerate(clients):
            started = time.monotonic()
            r = client.put(proxy.url + key + "p%d" % n, data={"value": "x"}, timeout=10)
            took = time.monotonic() - started
            assert took < 3.0, "a PUT must not hang on a paused member"
            assert r.status_code in (200, 201) or (
                500 <= r.status_code < 600 and "message" in r.json()), (r.status_code, r.text)
    finally:
        cluster.resume(bound[0])


def test_all_members_down_then_back(fresh_cluster, start_proxy, key):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, args=FAST, endpoints=3)
    client = sessions(1)[0]
    assert client.put(proxy.url + key, data={"value": "v"}).status_code == 201
    for i in range(3):
        cluster.kill(i)
    first = client.get(proxy.url + key, timeout=10)
    assert first.status_code in (502, 503)
    assert first.headers["Content-Type"] == "application/json"
    second = client.get(proxy.url + key, timeout=10)
    assert second.status_code == 503
    assert second.json() == {"message": "httpproxy: zero endpoints currently available"}
    for i in range(3):
        cluster.restart(i, wait=False)
    cluster.wait_healthy()
    back_at = time.monotonic()
    ok = poll(lambda: client.get(proxy.url + key, timeout=5).status_code == 200, timeout=10)
    took = time.monotonic() - back_at
    print("working again %.2f s after the cluster came back" % took)
    assert ok
    assert took < 1.0 + 1.0 + 1.0  # failure-wait + refresh interval + slack


def test_member_added_then_removed_shows_in_config(fresh_cluster, start_proxy):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, endpoints=3,
                        args=["--proxy-refresh-interval", "300"])
    new = cluster.add_member()
    assert poll(lambda: new.client_url in proxy.endpoints(), timeout=2.0)
    cluster.remove_member(len(cluster.members) - 1)
    assert poll(lambda: new.client_url not in proxy.endpoints(), timeout=2.0)
    assert sorted(proxy.endpoints()) == sorted(cluster.client_urls)


def test_no_duplicate_in_order_keys_when_member_dies_mid_post(fresh_cluster, start_proxy, key):
    """Each POST carries a unique value: none may be created twice."""
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, args=FAST, endpoints=3)
    clients, bound = bound_clients(cluster, proxy, key, {"dir": "true"})
    leader = cluster.leader_index()
    victim = next(i for i in bound if i != leader)
    statuses = {}
    pending = []

    def post(n):
        r = clients[n % 3].post(proxy.url + key, data={"value": "v%d" % n}, timeout=10)
        statuses[n] = r.status_code

    for n in range(60):
        if n == 30:
            # kill while POSTs are in flight on every connection
            pending = [gevent.spawn(post, n + j) for j in range(3)]
            cluster.kill(victim)
            gevent.joinall(pending, timeout=15)
            continue
        if 30 < n < 33:
            continue
        post(n)
    listing = requests.get(cluster.client_urls[leader] + key,
                           params={"recursive": "true", "quorum": "true"}).json()
    values = [node["value"] for node in listing["node"].get("nodes", [])]
    created = sorted(n for n, s in statuses.items() if s == 201)
    unknown = sorted(n for n, s in statuses.items() if s != 201)
    print("POSTs: %d created, %d answered %s, keys stored %d"
          % (len(created), len(unknown), sorted(set(statuses[n] for n in unknown)), len(values)))
    assert len(values) == len(set(values)), "a POST was applied twice"
    assert all("v%d" % n in values for n in created)
    assert all(statuses[n] in (502, 504) for n in unknown)
    assert len(values) <= len(created) + len(unknown)


def test_wrong_advertised_client_url_fails_over_then_recovers(fresh_cluster, start_proxy, key):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, args=FAST, endpoints=3)
    wrong = "http://127.0.0.1:%d" % free_port()
    right = cluster.members[1].client_url
    cluster.restart(1, advertise_only_url=wrong)
    assert poll(lambda: wrong in proxy.endpoints() or wrong in failed(proxy), timeout=3)
    clients = sessions(3)
    clients[0].put(proxy.url + key, data={"value": "v"})
    failures, _slowest = run_gets(proxy, clients, key, 30)
    assert failures == []
    cluster.restart(1, advertise_only_url=None)
    assert poll(lambda: right in proxy.endpoints() and wrong not in proxy.endpoints(),
                timeout=2.5)


def failed(proxy):
    doc = requests.get(proxy.url + "/v2/config/local/proxy").json()
    return [f["endpoint"] for f in doc.get("failed", [])]


def test_config_shows_failed_endpoints_and_last_refresh(fresh_cluster, start_proxy, key):
    cluster = fresh_cluster
    proxy = start_proxy(cluster.initial_cluster, endpoints=3,
                        args=["--proxy-failure-wait", "5000", "--proxy-refresh-interval", "300"])
    cluster.kill(0)
    clients = sessions(3)
    for c in clients:  # each connection binds to a member; one meets the dead one
        c.get(proxy.url + key)
    doc = requests.get(proxy.url + "/v2/config/local/proxy").json()
    assert cluster.members[0].client_url not in doc["endpoints"]
    entry = [f for f in doc["failed"] if f["endpoint"] == cluster.members[0].client_url]
    assert entry and 0 < entry[0]["retry_in_ms"] <= 5000
    assert doc["lastRefresh"]["ok"] is True
    # a refresh (every 300 ms) does not clear the failure mark
    first_refresh = doc["lastRefresh"]["time"]

    def after_next_refresh():
        later = requests.get(proxy.url + "/v2/config/local/proxy").json()
        return later if later["lastRefresh"]["time"] != first_refresh else None

    later = poll(after_next_refresh, timeout=3)
    assert later, "no refresh happened"
    assert cluster.members[0].client_url in [f["endpoint"] for f in later["failed"]]


# --- the data dir ---------------------------------------------------------------


def test_cluster_file_written_private_and_used_on_restart(fresh_cluster, tmp_path, key):
    cluster = fresh_cluster
    data_dir = str(tmp_path / "pd")
    p = ProxyProcess(cluster.initial_cluster, data_dir=data_dir, args=FAST)
    p.start(endpoints=3)
    try:
        path = os.path.join(data_dir, "proxy", "cluster")
        assert poll(lambda: os.path.exists(path), timeout=5)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with open(path) as f:
            assert json.load(f) == {"PeerURLs": sorted(cluster.peer_urls)}
    finally:
        assert p.stop() == 0
    unreachable = "x=http://127.0.0.1:%d" % free_port()
    again = ProxyProcess(unreachable, data_dir=data_dir, args=FAST)
    again.start(endpoints=3)
    try:
        r = requests.put(again.url + key, data={"value": "from-file"})
        assert r.status_code == 201
        assert "cluster file" in again.tail()
    finally:
        again.stop()


def test_garbage_cluster_file_exits_1_with_path(tmp_path):
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "cluster").write_text("garbage")
    done = run_cli(["--data-dir", str(tmp_path), "--listen-client-urls",
                    "http://127.0.0.1:%d" % free_port()], timeout=15)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "proxy" / "cluster") in lines[0]


def test_member_data_dir_is_refused(tmp_path):
    (tmp_path / "member").mkdir()
    done = run_cli(["--data-dir", str(tmp_path), "--listen-client-urls",
                    "http://127.0.0.1:%d" % free_port()], timeout=15)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert "belongs to an etcd member" in err and len(err.splitlines()) == 1
