"""geproxy.server: listening sockets and the pywsgi handler in front of the app.

* Listeners are made here with TCP_NODELAY: pywsgi writes the headers and the
  body in two sends, and with Nagle on every keep-alive response would wait
  ~40 ms for a delayed ACK (gevent#1233).  Linux copies the option to accepted
  sockets; the handler sets it again for listeners made elsewhere.
* Each client connection carries a ``Binding`` (endpoints.py) so that its
  requests stay on one member, released when the connection closes.
* The handler keeps the raw request target (``RAW_URI``: pywsgi decodes
  PATH_INFO, which would turn ``%2F`` into ``/``) and the client socket (for
  the disconnect guard) in the environ.
* Requests with ambiguous framing get 400 before the app sees them: both
  Content-Length and Transfer-Encoding, a transfer coding other than chunked,
  or HTTP/1.1 without Host (as Go's server).
"""

import logging
import socket
from urllib.parse import urlsplit

from gevent import pywsgi
from gevent.pool import Pool

from geproxy.disconnect import CLIENT_SOCKET
from geproxy.endpoints import BINDING, Binding

log = logging.getLogger("geproxy.server")

BACKLOG = 2048
MAX_CONNECTIONS = 100000  # per process; pywsgi stops accepting when the pool is full


def listen_address(url):
    """('host', port) from an http://host:port listen URL."""
    parts = urlsplit(url)
    return parts.hostname, parts.port


def make_listener(host, port, backlog=BACKLOG):
    """A bound, listening TCP socket with SO_REUSEADDR and TCP_NODELAY."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ProxyHandler(pywsgi.WSGIHandler):
    """pywsgi's handler plus NODELAY, the raw target and stricter framing checks."""

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.binding = Binding()  # which member this connection's requests go to
        try:
            super().handle()
        finally:
            self.binding.release()

    def MessageClass(self, *args):
        headers = super().MessageClass(*args)
        coding = headers.get("Transfer-Encoding")
        if coding is not None:
            if headers.get("Content-Length") is not None:
                raise ValueError("both Content-Length and Transfer-Encoding given")
            if coding.strip().lower() != "chunked":
                raise ValueError("unsupported Transfer-Encoding %r" % coding)
        if len(headers.get_all("Content-Length") or ()) > 1:
            raise ValueError("more than one Content-Length")
        return headers

    def read_request(self, raw_requestline):
        ok = super().read_request(raw_requestline)
        if ok and self.request_version == "HTTP/1.1" and self.headers.get("Host") is None:
            raise ValueError("missing required Host header")
        return ok

    def get_environ(self):
        env = super().get_environ()
        env["RAW_URI"] = self.path
        env[CLIENT_SOCKET] = self.socket
        env[BINDING] = self.binding
        return env


class _ErrorLog:
    """pywsgi's error_log (client parse errors) into logging, one line each."""

    def write(self, message):
        message = message.strip()
        if message:
            log.info("%s", message)

    def flush(self):
        pass


class ProxyServer:
    """One pywsgi server per listen URL, all serving the same app."""

    def __init__(self, app, listen_urls, max_connections=MAX_CONNECTIONS):
        self.servers = []
        pool = Pool(max_connections)
        try:
            for url in listen_urls:
                host, port = listen_address(url)
                listener = make_listener(host, port)
                server = pywsgi.WSGIServer(
                    listener, app, handler_class=ProxyHandler, spawn=pool,
                    log=None, error_log=_ErrorLog(),
                    environ={"SERVER_NAME": host, "SERVER_PORT": str(port)})
                self.servers.append(server)
        except OSError:
            self.close()
            raise

    @property
    def addresses(self):
        return [server.address for server in self.servers]

    def start(self):
        for server in self.servers:
            server.start()
            log.info("listening for client requests on %s:%s", *server.address[:2])

    def close(self):
        """Stop accepting new connections."""
        for server in self.servers:
            server.close()

    def stop(self, timeout=1.0):
        for server in self.servers:
            server.stop(timeout=timeout)
