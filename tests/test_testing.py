"""geproxy.testing, the harness itself: if it is wrong, every other test lies.

Each test builds its own small cluster (about 0.3 s to start on tmpfs)
rather than using the shared session cluster, because these tests kill,
pause and reconfigure members.
"""

import os
import time

import pytest

from geproxy.testing import (LocalCluster, Member, ProxyProcess, free_port, metric_value,
                             parse_metrics)
from geproxy.testing import wrk
from geproxy.testing.procfs import cpu_seconds, gone
from geproxy.testing.rawhttp import Reader
from tests.helpers import session


@pytest.fixture
def s():
    http = session()
    yield http
    http.close()


def put(s, url, key, value):
    r = s.put("%s/v2/keys/%s" % (url, key), data={"value": value}, timeout=5)
    assert r.status_code in (200, 201), r.text
    return r.json()


def get(s, url, key):
    r = s.get("%s/v2/keys/%s" % (url, key), timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["node"]["value"]


def test_cluster_lifecycle_kill_restart_close(s):
    c = LocalCluster(size=3)
    base_dir = c.base_dir
    with c:
        c.start()  # a second start() inside `with` is a no-op
        assert c.initial_cluster == ",".join(
            "m%d=%s" % (i, u) for i, u in enumerate(c.peer_urls))
        pids = [m.pid for m in c.members]
        put(s, c.client_urls[0], "lc/a", "1")
        assert [get(s, u, "lc/a") for u in c.client_urls] == ["1"] * 3

        leader = c.leader_index()
        follower = (leader + 1) % 3
        c.kill(follower)
        assert gone(pids[follower]) and not c.members[follower].alive
        put(s, c.members[leader].client_url, "lc/a", "2")  # quorum of 2

        c.restart(follower)
        assert c.members[follower].pid != pids[follower]
        pids.append(c.members[follower].pid)
        assert get(s, c.members[follower].client_url, "lc/a") == "2"

        m = c.members[0]
        assert m.metric("etcd_debugging_store_watchers") == 0.0
        assert m.metric("etcd_http_received_total", method="PUT") >= 1
        assert m.metric("no_such_metric", default=-1.0) == -1.0
    assert all(gone(p) for p in pids)
    assert not os.path.exists(base_dir)
    c.close()  # idempotent


def test_pause_resume_add_remove_and_new_client_url(s):
    with LocalCluster(size=3) as c:
        # Pause a follower: with the leader stopped, a write sent meanwhile
        # is dropped by etcd and only fails after its ~6 s request timeout.
        leader = c.leader_index()
        follower = (leader + 1) % 3
        c.pause(follower)
        put(s, c.members[leader].client_url, "lc/b", "1")  # 2 of 3: quorum
        c.resume(follower)
        c.wait_healthy(timeout=10)

        new = c.add_member()
        assert len(c.members) == 4 and new.name == "m3"
        assert get(s, new.client_url, "lc/b") == "1"
        names = lambda: sorted(x["name"] for x in s.get(  # noqa: E731
            c.client_urls[0] + "/v2/members", timeout=5).json()["members"])
        assert names() == ["m0", "m1", "m2", "m3"]

        removed = c.remove_member(1)
        assert removed.name == "m1" and gone(removed.pid)
        assert names() == ["m0", "m2", "m3"]

        url = "http://127.0.0.1:%d" % free_port()
        c.restart(1, advertise_client_url=url)  # index 1 is now m2
        assert c.members[1].client_url == url
        members = s.get(url + "/v2/members", timeout=5).json()["members"]
        assert [x["clientURLs"] for x in members if x["name"] == "m2"] == [[url]]
        pids = [m.pid for m in c.members]
    assert all(gone(p) for p in pids)


def test_start_failure_reports_member_output(tmp_path):
    fake = tmp_path / "fake-etcd"
    fake.write_text("#!/bin/sh\necho 'fake etcd refuses to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    c = LocalCluster(size=1, base_dir=str(tmp_path / "c"), etcd_bin=str(fake))
    with pytest.raises(RuntimeError, match="fake etcd refuses to start"):
        c.start(timeout=10)
    c.close()
    assert all(gone(m.pid) for m in c.members)


def test_metric_values_by_name_and_labels():
    samples = parse_metrics(
        '# HELP etcd_http_received_total y\n# TYPE etcd_http_received_total counter\n'
        'etcd_debugging_store_watchers 3\n'
        'etcd_http_received_total{method="GET"} 12\n'
        'etcd_http_received_total{method="PUT"} 5\n'
        'go_info{version="go 1.19"} 1\n')
    assert metric_value(samples, "etcd_debugging_store_watchers") == 3.0
    assert metric_value(samples, "etcd_http_received_total", method="GET") == 12.0
    assert metric_value(samples, "etcd_http_received_total") == 17.0  # over every method
    assert metric_value(samples, "go_info", version="go 1.19") == 1.0
    assert metric_value(samples, "etcd_http_received_total", -1.0, method="QGET") == -1.0


def test_member_without_process_has_no_pid():
    m = Member("x", "http://127.0.0.1:1", "http://127.0.0.1:2",
               "/nonexistent", "/nonexistent.log")
    assert m.pid is None and not m.alive and m.returncode is None
    assert m.stop() is None and m.kill() is None
    with pytest.raises(RuntimeError):
        m.pause()
    # it advertises the URL it listens on unless told otherwise
    cmd = m.command("etcd", "tok")
    assert cmd[cmd.index("--advertise-client-urls") + 1] == "http://127.0.0.1:1"
    assert "--discovery" not in cmd and cmd[cmd.index("--initial-cluster-token") + 1] == "tok"
    m.discovery_url = "http://127.0.0.1:3/v2/keys/_etcd/registry/t"
    cmd = m.command("etcd", "tok")
    assert cmd[cmd.index("--discovery") + 1] == m.discovery_url
    assert "--initial-cluster" not in cmd


def test_cpu_seconds_uses_the_real_clock_tick():
    end = time.process_time() + 0.3
    while time.process_time() < end:  # bounded: 0.3 s of our own CPU
        pass
    times = os.times()
    assert abs(cpu_seconds(os.getpid()) - (times.user + times.system)) < 0.1


def test_proxy_process_start_and_stop_by_pid(s, tmp_path):
    with LocalCluster(size=1) as c:
        p = ProxyProcess(c.initial_cluster, data_dir=str(tmp_path / "proxy"))
        try:
            p.start(endpoints=1, timeout=20)
            assert p.endpoints() == c.client_urls
            put(s, p.url, "lc/p", "1")
            assert get(s, p.url, "lc/p") == "1"
        finally:
            assert p.stop() == 0  # SIGTERM: a clean shutdown
        assert gone(p.pid)
        assert os.path.exists(str(tmp_path / "proxy.log"))


WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8080/v2/keys/bench
  2 threads and 1000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   111.80ms   50.90ms 778.10ms   94.65%
    Req/Sec     4.70k     1.14k    7.22k    82.74%
  Latency Distribution
     50%  102.96ms
     75%  112.88ms
     90%  135.35ms
     99%    1.36s
  92468 requests in 10.09s, 39.95MB read
  Socket errors: connect 0, read 3, write 0, timeout 12
  Non-2xx or 3xx responses: 7
Requests/sec:   9161.94
Transfer/sec:      3.96MB
"""


def test_wrk_summary_as_numbers():
    assert wrk.parse(WRK_OUTPUT) == {"rps": 9161.94, "requests": 92468, "p50": 102.96,
                                     "p99": 1360.0, "non2xx": 7, "socket_errors": 15}
    assert wrk.parse("")["requests"] is None  # wrk failed: nothing invented


def test_raw_reader_reads_back_to_back_responses_of_each_framing():
    class Bytes:
        def __init__(self, data):
            self.data = data

        def recv(self, n):
            data, self.data = self.data[:7], self.data[7:]  # a few bytes per read
            return data

    reader = Reader(Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"
        b"HTTP/1.0 200 OK\r\n\r\nto the close"))
    assert reader.response() == (200, {"content-length": "3"}, b"abc")
    assert reader.response() == (200, {"transfer-encoding": "chunked"}, b"def")
    assert reader.response() == (204, {"x-a": "b"}, b"")
    assert reader.response() == (200, {}, b"to the close")
    with pytest.raises(EOFError):
        reader.response()
