"""Listen URLs beyond http://host:port: unix://path and IPv6 [::1], for 1 and 2 workers."""

import os
import socket

import pytest

from geproxy.listeners import bound_url, listen_address, make_listener, unix_path
from geproxy.testing import free_port
from geproxy.testing.rawhttp import Reader
from tests.fakeetcd import BODY, FakeEtcd
from tests.helpers import session

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])


@pytest.fixture
def member():
    with FakeEtcd() as fake:
        yield fake


def test_listen_url_parts():
    assert listen_address("http://[::1]:2379") == ("::1", 2379)
    assert listen_address("unix:///tmp/p.sock") == ("/tmp/p.sock", None)
    assert unix_path("unix://localhost:2379") == "localhost:2379"  # etcd's form: a file name
    assert unix_path("http://127.0.0.1:2379") is None
    assert bound_url("http://[::1]:0", ("::1", 4242, 0, 0)) == "http://[::1]:4242"


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "p.sock")
    make_listener(path, None).close()  # leaves its file behind, like a killed process
    sock = make_listener(path, None)
    try:
        assert sock.family == socket.AF_UNIX and sock.getsockname() == path
    finally:
        sock.close()


@WORKERS
def test_unix_socket_listener(member, workers, tmp_path, start_proxy):
    path = str(tmp_path / "proxy.sock")
    tcp = "http://127.0.0.1:%d" % free_port()  # also listened on, for start()'s readiness check
    proxy = start_proxy(member.initial_cluster,
                        ["--listen-client-urls", "unix://%s,%s" % (path, tcp),
                         "--workers", str(workers)], listen_url=tcp)
    for _ in range(3):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(b"GET /v2/keys/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _headers, body = Reader(sock).response()
        finally:
            sock.close()
        assert (status, body) == (200, BODY)
    if workers == 1:
        assert "listening for client requests on unix://%s" % path in proxy.tail(200)
    assert proxy.stop() == 0
    assert not os.path.exists(path)  # as etcd, the socket file goes with the listener


@WORKERS
def test_ipv6_listener(member, workers, start_proxy):
    url = "http://[::1]:%d" % free_port("::1")
    proxy = start_proxy(member.initial_cluster, ["--workers", str(workers)], listen_url=url)
    with session() as http:
        r = http.get(url + "/v2/keys/a", timeout=10)
    assert (r.status_code, r.content) == (200, BODY)
    if workers == 1:
        assert "listening for client requests on %s" % url in proxy.tail(200)
