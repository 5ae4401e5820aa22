"""``--workers 2``: one arbiter, two worker processes sharing the listener, real etcd.

Which worker served a connection is read from /proc (the worker holding the
server side of that TCP connection), so the proxy needs no debug endpoint.
"""

import http.client
import os
import select
import signal
import socket
import subprocess
import time

import pytest
from gevent.monkey import get_original

from geproxy.admission import LONG_QUEUE, Board, Gate, queued
from geproxy.testing import free_port
from geproxy.testing.procfs import children, gone, holder, socket_inodes, tcp_rows
from tests.helpers import poll

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")


@pytest.fixture
def workers_proxy(cluster, start_proxy):
    return start_proxy(cluster.initial_cluster, args=["--workers", "2"],
                       endpoints=len(cluster.members))


def test_two_workers_serve_writes_and_reads(http, workers_proxy, key):
    assert poll(lambda: len(children(workers_proxy.pid)) == 2, timeout=10)
    r = http.put(workers_proxy.url + key, data={"value": "shared"})
    assert r.status_code == 201
    for _ in range(40):  # a fresh connection each time: any worker may take it
        conn = workers_proxy.connection()
        try:
            conn.request("GET", key)
            resp = conn.getresponse()
            assert resp.status == 200
            assert b'"value":"shared"' in resp.read()
        finally:
            conn.close()


def test_connections_spread_over_both_workers_and_sigterm_stops_all(workers_proxy):
    proxy = workers_proxy
    assert poll(lambda: len(children(proxy.pid)) == 2, timeout=10)
    workers = children(proxy.pid)
    seen, held = set(), []
    try:
        # Each connection stays open after its request, so its worker can be
        # looked up; both workers accept from the shared listener.
        for _ in range(200):
            conn = proxy.connection()
            held.append(conn)
            conn.request("GET", "/v2/keys/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            seen.add(holder(conn.sock, workers))
            if seen >= set(workers):
                break
        assert seen == set(workers)

        # The held connections are idle keep-alives: they must not hold the
        # shutdown for the graceful timeout.
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert poll(lambda: proxy.proc.poll() is not None, timeout=12.0)
        assert poll(lambda: all(gone(pid) for pid in workers), timeout=1.0)
        assert time.monotonic() - started < 5.0
        assert proxy.proc.returncode == 0
    finally:
        for conn in held:
            conn.close()


def test_a_burst_of_new_connections_is_shared_by_the_workers(workers_proxy):
    """40 connections opened at once (as wrk opens its 50) split about evenly, three bursts
    in a row: the worker that wakes first no longer takes the whole queue (it did 50/0,
    44/6 before).  Without the board each burst failed in four runs of four."""
    proxy = workers_proxy
    workers = proxy.wait_workers(2)  # both have their member list and serve
    assert poll(lambda: not served_by(workers, proxy.port), timeout=10)
    for attempt in range(3):  # without the board one burst in three split by chance
        burst = [socket.socket() for _ in range(40)]
        try:
            for sock in burst:  # as fast as wrk: no waiting for each handshake
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", proxy.port))

            def owners():
                found = [holder(sock, workers) for sock in burst]
                return None if None in found else found  # until every one was accepted

            accepted = poll(owners, timeout=10, what="every connection accepted")
            counts = sorted(accepted.count(pid) for pid in workers)
            assert counts[0] >= 8, (attempt, counts)  # without the board: 0 of 40, 2 runs in 3
        finally:
            for sock in burst:
                sock.close()
        # the workers saw every close (and took them off the board) before the next burst
        assert poll(lambda: not served_by(workers, proxy.port), timeout=10)


def served_by(workers, port):
    """The server sides of client connections to ``port`` that the workers still hold."""
    inodes = socket_inodes(workers)
    return [inode for local, remote, _state, inode in tcp_rows()
            if local == port and remote and inode in inodes]


def held_if_served(port):
    """A keep-alive connection that got a 200 and stays open, or None if it was shed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/v2/config/local/proxy")
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            return conn
        assert resp.status == 503
    except (ConnectionError, http.client.RemoteDisconnected):
        pass  # shed by closing
    conn.close()
    return None


def test_connection_cap_is_per_worker_over_all_its_listeners(cluster, start_proxy):
    """--proxy-max-connections counts a worker's connections on all its listeners
    together (one Gate per worker, as in one process): two workers capped at one
    serve at most two clients at once, however they spread over two listeners."""
    first, second = ("http://127.0.0.1:%d" % free_port() for _ in range(2))
    proxy = start_proxy(cluster.initial_cluster,
                        ["--workers", "2", "--proxy-max-connections", "1",
                         "--listen-client-urls", "%s,%s" % (first, second)],
                        endpoints=len(cluster.members), listen_url=first)
    assert poll(lambda: len(children(proxy.pid)) == 2, timeout=10)
    workers = children(proxy.pid)
    ports = [int(url.rsplit(":", 1)[1]) for url in (first, second)]
    held = []
    try:
        # start-up probes may still hold a slot for a moment: take what is free
        deadline = time.monotonic() + 5.0
        while not held and time.monotonic() < deadline:
            conn = held_if_served(ports[0])
            if conn is not None:
                held.append(conn)
        assert held, "no connection was served"
        for port in ports * 10:
            conn = held_if_served(port)
            if conn is not None:
                held.append(conn)
        owners = [holder(conn.sock, workers) for conn in held]
        assert None not in owners and len(set(owners)) == len(owners), \
            "a worker serves %d connections at once" % max(owners.count(w) for w in owners)
        assert 1 <= len(held) <= 2
    finally:
        for conn in held:
            conn.close()


def test_the_board_compares_a_worker_with_its_live_siblings_only():
    board = Board(seats=4)
    me, sibling = board.seat(), board.seat()  # both this process
    assert (me.index, sibling.index) == (0, 1)
    me.update(5)
    sibling.update(3)
    assert me.ahead() and not sibling.ahead()  # 3 < 5 - SLACK
    sibling.update(4)
    assert not me.ahead()  # within SLACK
    sibling.update(0)
    exited = subprocess.Popen(["true"])
    exited.wait()
    board.pids[1] = exited.pid  # a sibling that died with few connections
    assert not me.ahead()
    board.pids[1] = os.getpid()
    assert me.ahead()
    sibling.leave()  # a draining sibling takes no new connections
    assert not me.ahead()


def test_a_worker_takes_a_free_or_abandoned_seat_and_none_on_a_full_board():
    board = Board(seats=2)
    first, second = board.seat(), board.seat()
    assert {first.index, second.index} == {0, 1}
    assert board.seat() is None  # every seat has a live worker
    exited = subprocess.Popen(["true"])
    exited.wait()
    board.pids[second.index] = exited.pid  # its worker died without leaving
    third = board.seat()
    assert third.index == second.index and board.pids[third.index] == os.getpid()
    first.leave()
    assert board.seat().index == first.index


def test_live_workers_never_share_a_seat():
    """Workers forked from one arbiter take seats at the same time: each gets its own
    (gunicorn's worker ages, which grow with every respawn, once put two on one).

    The children come from the unpatched fork and use the unpatched close (gevent's
    defers closing a pipe to its loop's next turn): they make blocking calls only and
    leave by ``os._exit``, so they need no event loop of their own."""
    fork, waitpid = get_original("os", "fork"), get_original("os", "waitpid")
    close = get_original("os", "close")
    board = Board(seats=8)
    report_r, report_w = os.pipe()  # the children's seat numbers
    hold_r, hold_w = os.pipe()  # they stay alive until this closes
    pids = []
    try:
        for _ in range(6):
            pid = fork()
            if pid == 0:
                try:
                    close(hold_w)
                    seat = board.seat()
                    os.write(report_w, b"%d\n" % (-1 if seat is None else seat.index))
                    close(report_w)
                    os.read(hold_r, 1)
                finally:
                    os._exit(0)
            pids.append(pid)
        os.close(report_w)
        report_w = None
        seats, deadline = b"", time.monotonic() + 10
        while time.monotonic() < deadline:  # until every child closed its end
            if select.select([report_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(report_r, 64)
                if not chunk:
                    break
                seats += chunk
        assert sorted(int(n) for n in seats.split()) == list(range(6))
    finally:
        for fd in (hold_w, report_w, report_r, hold_r):
            if fd is not None:
                close(fd)

        def running(pid):  # gevent's child watcher may have reaped it already
            try:
                return waitpid(pid, os.WNOHANG) == (0, 0)
            except ChildProcessError:
                return False
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if running(pid)]
            time.sleep(0.01)
        for pid in pids:  # still there after 10 s: the test has failed already
            os.kill(pid, signal.SIGKILL)


def test_a_worker_ahead_holds_back_only_while_the_queue_is_short():
    """The accept queue's length is the kernel's (TCP_INFO); from LONG_QUEUE waiting,
    every worker takes what it can (a thousand clients at once: holding back made the
    queue wait seconds)."""
    board = Board(seats=2)
    gate = Gate()
    gate.join(board.seat())
    sibling = board.seat()
    gate.seat.update(10)  # ahead of a sibling with none
    listener = socket.socket()
    clients = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(LONG_QUEUE * 2)
        assert queued(listener) == 0 and gate.pass_on(listener)
        for _ in range(LONG_QUEUE):
            clients.append(socket.create_connection(listener.getsockname(), timeout=5))
        assert poll(lambda: queued(listener) == LONG_QUEUE)
        assert not gate.pass_on(listener)
        sibling.update(10)
        assert not gate.pass_on(listener)  # level again
    finally:
        for client in clients:
            client.close()
        listener.close()
        gate.close()
