"""Wire-level behaviour a WSGI test client cannot show: framing, keep-alive, sockets."""

import socket

import pytest

from geproxy.admission import Gate
from geproxy.listeners import make_listener
from geproxy.server import ProxyServer, PyWSGIServer
from tests.inproc import status_of
from tests.inproc import exchange as inproc_exchange


def exchange(port, raw):
    """Send raw bytes on a new connection; everything until the server closes."""
    return inproc_exchange(port, raw, half_close=False)


MALFORMED = {
    "bad chunk size": b"PUT {key} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n\r\nzz\r\nvalue=1\r\n0\r\n\r\n",
    "non-numeric Content-Length": b"PUT {key} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nvalue=1",
    "Content-Length and Transfer-Encoding": b"PUT {key} HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    "two Content-Lengths": b"PUT {key} HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
                           b"Content-Length: 8\r\n\r\nvalue=1",
    "unknown transfer coding": b"PUT {key} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nvalue=1",
    "HTTP/1.1 without Host": b"GET {key} HTTP/1.1\r\n\r\n",
}
STATUS = {"unknown transfer coding": 501}  # as Go's net/http; the rest 400


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_refused_and_nothing_written(http, cluster, proxy, key, case):
    raw = MALFORMED[case].replace(b"{key}", key.encode())
    answer = exchange(proxy.port, raw)
    assert status_of(answer) == STATUS.get(case, 400), answer
    assert http.get(cluster.client_urls[0] + key).status_code == 404
    # and the proxy keeps serving
    assert http.put(proxy.url + key, data={"value": "ok"}).status_code == 201


def test_absolute_form_target_goes_to_a_member_by_path(http, proxy, key):
    http.put(proxy.url + key, data={"value": "abs"})
    raw = ("GET http://example.invalid:9%s HTTP/1.1\r\nHost: example.invalid\r\n"
           "Connection: close\r\n\r\n" % key).encode()
    answer = exchange(proxy.port, raw)
    assert status_of(answer) == 200
    assert b'"value":"abs"' in answer


def test_head_then_get_on_one_keepalive_connection(http, proxy, key):
    """HEAD carries no body, so the next response on the connection parses cleanly."""
    http.put(proxy.url + key, data={"value": "kept"})
    raw = ("HEAD {k} HTTP/1.1\r\nHost: x\r\n\r\nGET {k} HTTP/1.1\r\nHost: x\r\n"
           "Connection: close\r\n\r\n").format(k=key).encode()
    answer = exchange(proxy.port, raw)
    head, rest = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    get_head, get_body = rest.split(b"\r\n\r\n", 1)
    length = [line for line in get_head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert int(length[0].split(b":")[1]) == len(get_body)
    assert b'"value":"kept"' in get_body


def test_client_connections_have_tcp_nodelay():
    """Without TCP_NODELAY each keep-alive response waits ~40 ms for a delayed ACK."""
    def app(environ, start_response):
        sock = environ["geproxy.client_socket"]
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(value).encode()]

    server = ProxyServer(app, ["http://127.0.0.1:0"])
    server.start()
    try:
        port = server.addresses[0][1]
        listener = server.servers[0].socket
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.endswith(b"\r\n\r\n1")
    finally:
        server.stop()


@pytest.mark.parametrize("multiprocess, queued, accepted", [(False, 300, 300), (True, 150, 100)])
def test_one_loop_turn_accepts_the_queued_burst(multiprocess, queued, accepted):
    """One process accepts every queued connection in one loop turn; a worker
    (wsgi.multiprocess) takes 100 a turn and leaves the rest to the others.  pywsgi
    would accept one a turn there, and a busy worker then left a burst in the listen
    queue for seconds."""
    def app(environ, start_response):
        start_response("204 No Content", [])
        return []

    server = PyWSGIServer(make_listener("127.0.0.1", 0), app, gate=Gate(),
                          environ={"wsgi.multiprocess": multiprocess})
    clients = []
    try:
        clients = [socket.create_connection(server.address, timeout=5.0)
                   for _ in range(queued)]
        server._do_read()  # what the listener's watcher runs once per loop turn (gevent)
        assert server.gate.open == accepted
    finally:
        for sock in clients:
            sock.close()
        server.stop(timeout=1.0)
