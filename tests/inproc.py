"""The whole proxy in this test process: our server, handler, app and client on real
loopback sockets, in front of fake members, for wire tests that need exact control
of what a member does (real etcd cannot drop a request, pause mid-body, close idle
connections on cue)."""

import socket
from contextlib import contextmanager

from geproxy.app import ProxyApp
from geproxy.endpoints import EndpointSet
from geproxy.server import ProxyServer
from geproxy.upstream import make_transport

READ_TIMEOUT = 10.0  # seconds any single read from the proxy may take in a test


@contextmanager
def proxy_stack(*member_urls, transport="native", idle_timeout=300.0, header_timeout=10.0,
                member_head_timeout=5.0, readonly=False, tls=None, max_connections=0,
                pipelines=2, **app_options):
    """A started in-process proxy in front of ``member_urls`` (tried in the order given).

    With ``tls`` (a geproxy.tls.TLS) it listens on https and reaches https
    members with that TLS's contexts.  Yields (port, server): the
    ``ProxyServer`` (its ``app``, ``servers``...); everything is stopped afterwards.
    ``pipelines`` is --proxy-pipeline (the native transport's), the proxy's default.
    """
    endpoints = EndpointSet(failure_wait=5.0, balance="first")
    endpoints.replace(member_urls, shuffle=False)
    upstream = make_transport(transport, dial_timeout=1.0, write_timeout=5.0, read_timeout=0.0,
                              tls_context=tls.forward if tls is not None else None,
                              pipelines=pipelines)
    app = ProxyApp(endpoints, upstream, readonly=readonly, header_timeout=member_head_timeout,
                   **app_options)
    listen = "https://127.0.0.1:0" if tls is not None else "http://127.0.0.1:0"
    server = ProxyServer(app, [listen], max_connections=max_connections,
                         idle_timeout=idle_timeout, header_timeout=header_timeout,
                         tls_contexts=tls.listener_contexts([listen]) if tls is not None else None)
    server.start()
    server.app = app
    try:
        yield server.addresses[0][1], server
    finally:
        server.stop(timeout=1.0)
        upstream.close()


def connect(port, timeout=READ_TIMEOUT):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def exchange(port, raw, half_close=True, timeout=READ_TIMEOUT):
    """Send raw bytes on a new connection; everything the proxy sent until it closed."""
    sock = connect(port, timeout)
    try:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may refuse and close before everything was sent
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    finally:
        sock.close()


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None
