"""geproxy.handler: the per-connection loop between a client socket and the WSGI app.

pywsgi's ``WSGIHandler`` is generic: it parses heads through ``http.client``
and ``email.feedparser``, checks every response header in Python, writes
head and body apart and formats an access-log line per request.  That was
most of the proxy's CPU (bench/README.md).  ``ProxyHandler`` keeps the pywsgi
contract (``handler_class`` of a ``pywsgi.WSGIServer``, constructed with the
socket, address and server, ``handle()`` runs the connection) and replaces
the loop inside it:

* the head is read into one buffer and parsed strictly (``http11``); a head
  cut off before its blank line is never carried out, whatever follows;
* a head that started must finish within ``header_timeout`` seconds
  (``--proxy-client-header-timeout``), and the wait for the next request on a
  keep-alive connection is bounded by ``idle_timeout``; past a limit the
  client gets 431 (head over 1 MiB) or 414 (request line too long), and a
  malformed head its 4xx; each of these closes the connection;
* the environ has every PEP 3333 key plus ``RAW_URI`` (the target as sent),
  the client socket (the disconnect guard) and the connection's ``Binding``
  (endpoints.py), built from a copy of the server's base dict and the entries
  of its head, which like the parse are worked out once per distinct head
  (``REQUESTS``, an ``http11.HeadMemo``);
* the answer is written by the ``writer.AnswerWriter`` half of the class
  (one send per answer where possible, chunked framing when streaming);
* keep-alive and HTTP/1.0 rules, ``Connection: close``, pipelined requests
  (bytes after a body stay in the buffer for the next round) and
  ``Expect: 100-continue`` (answered when the app first reads the body).
"""

import logging
import socket

import gevent
from gevent import pywsgi

from geproxy import http11, sockio
from geproxy.body import NO_BODY, Body
from geproxy.disconnect import CLIENT_SOCKET
from geproxy.endpoints import BINDING, Binding
from geproxy.errors import (BadRequest, ClientGone, ClientTimeout, HeadTooLarge, TargetTooLong)
from geproxy.headers import RAW_HEADERS, RELAY
from geproxy.writer import AnswerWriter

log = logging.getLogger("geproxy.handler")

DRAIN_MAX = 64 << 10  # unread body bytes drained to keep a connection alive
PARK_AFTER = 1.0  # seconds an idle keep-alive connection keeps its greenlet before parking


def _split_target(target):
    """(PATH_INFO, QUERY_STRING) from a request target: path percent-decoded as latin-1."""
    path, _, query = target.partition("?")
    if path[0] != "/":
        if path == "*":
            return "*", query
        slash = path.find("/", path.find("://") + 3)
        path = path[slash:] if slash >= 0 else "/"
    path = path.partition("#")[0]
    if "%" in path:
        path = http11.unquote(path)
    return path, query


def environ_entries(req):
    """The WSGI environ entries a request head makes: the same for every request with
    that head, so they are worked out once per head (``REQUESTS``)."""
    path, query = _split_target(req.target)
    entries = {"REQUEST_METHOD": req.method, "PATH_INFO": path, "QUERY_STRING": query,
               "RAW_URI": req.target, "REQUEST_URI": req.target,
               "SERVER_PROTOCOL": req.version}
    for name, value in req.headers:
        key = http11.header_name(name)[1]
        entries[key] = entries[key] + "," + value if key in entries else value
    if "HTTP_CONTENT_TYPE" in entries:
        entries["CONTENT_TYPE"] = entries.pop("HTTP_CONTENT_TYPE")
    if req.length is not None:
        entries.pop("HTTP_CONTENT_LENGTH", None)
        entries["CONTENT_LENGTH"] = str(req.length)
    return entries


def _parse_request(head):
    req = http11.parse_request(head.decode("latin-1"))
    return req, environ_entries(req)


# the request heads of this process, each parsed once: (Request, environ entries),
# shared by every request with that head, so read only
REQUESTS = http11.HeadMemo(_parse_request)


class Idle(Exception):
    """The connection has been idle for PARK_AFTER seconds: park it (see ``run``)."""


class ProxyHandler(AnswerWriter, pywsgi.WSGIHandler):
    """One client connection: read, parse, call the app, write, until it ends.

    The server provides ``idle_timeout`` and ``header_timeout`` (seconds,
    0 = none), ``rejected`` (an ``Every`` for refused input), ``connections``
    (a set of live handlers, for draining) and ``draining``.
    """

    # per connection and per request; the class attributes are the defaults
    wire = None
    binding = None
    idle = False
    greenlet = None
    _idle_timer = None

    def __init__(self, sock, address, server, rfile=None):
        # no makefile(): the loop below reads into its own buffer
        self.socket = sock
        self.client_address = address
        self.server = server

    def handle(self):
        """A new connection (pywsgi calls this in its first greenlet): set up, then serve."""
        server = self.server
        sock = self.socket
        server.connections.add(self)
        self.binding = Binding()
        try:
            if sock.family != socket.AF_UNIX:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            context = server.ssl_context
            if context is not None:
                sock = self.socket = self.handshake(context, sock)
                if sock is None:
                    self.finish()
                    return
            self.wire = sockio.wire(sock)
        except BaseException:
            self.finish()
            raise
        self.run()

    def run(self):
        """Serve requests until the connection ends, or parks while idle.

        An idle keep-alive connection gives its greenlet up after
        ``PARK_AFTER`` seconds (``park``): thousands of idle clients then cost
        a socket, a watcher and this object each, not a greenlet and its
        stack.  Its next request (or its close) runs this again in a new
        greenlet.
        """
        self.greenlet = gevent.getcurrent()
        ended = True
        try:
            self.serve(self.binding)
        except Idle:
            ended = not self.park()
        except (ClientGone, ClientTimeout, ConnectionError, TimeoutError):
            pass  # the client left, stalled or reset: nothing to answer
        except OSError as exc:
            log.debug("client connection %s ended: %s", self.client_address, exc)
        finally:
            self.greenlet = None
            if ended:
                self.finish()

    def park(self):
        """Wait for the next request without a greenlet; False if that is not possible.

        TLS connections park too: the idle wait timed out with nothing decrypted
        pending, and OpenSSL reads no further ahead than the record it decrypts,
        so the next request's bytes are still the kernel socket's and wake it.
        """
        server = self.server
        if server.draining:
            return False
        server.parked[self.socket] = self
        idle = server.idle_timeout
        if idle:
            self._idle_timer = gevent.get_hub().loop.timer(max(idle - PARK_AFTER, 0.001))
            self._idle_timer.start(self.expire)
        self.wire.on_readable(self.wake)
        return True

    def _unpark(self):
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None:
            timer.close()
        self.wire.on_readable(None)
        self.server.parked.pop(self.socket, None)

    def wake(self):
        """The parked connection is readable (a request, or the client closed)."""
        self._unpark()
        self.server.pool.spawn(self.run)

    def expire(self):
        """The parked connection was idle for the idle timeout (or the server drains): close."""
        self._unpark()
        self.finish()

    def finish(self):
        """The connection is over: its binding, its socket, its place in the counts."""
        server = self.server
        if self.binding is not None:
            self.binding.release()
            self.binding = None
        server.connections.discard(self)
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.close()
        else:
            self.socket.close()
        server.gate.closed()

    def handshake(self, context, sock):
        """The TLS handshake, bounded by the header timeout; None if it failed."""
        try:
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            tls.settimeout(self.server.header_timeout or None)
            tls.do_handshake()
            tls.settimeout(None)
            return tls
        except (OSError, ValueError) as exc:
            self.server.rejected("TLS handshake with %s failed: %s", self.client_address[0]
                                 if isinstance(self.client_address, tuple) else "unix", exc)
            sock.close()
            return None

    # --- the loop ---------------------------------------------------------------------

    def serve(self, binding):
        server = self.server
        wire = self.wire
        app = server.application
        base = server.environ
        sock = self.socket
        address = self.client_address
        remote = address if isinstance(address, tuple) else ("", "")
        remote_addr, remote_port = remote[0], str(remote[1])
        header_timeout = server.header_timeout or None
        relay = self.relay
        parse = REQUESTS
        buf = b""
        fresh = True  # a new or woken connection: its request is most likely here already
        while True:
            if buf[:1] in b"\r\n":  # empty lines before a request line (RFC 9112 2.2)
                buf = buf.lstrip(b"\r\n")
            end = buf.find(b"\r\n\r\n")
            try:
                if end <= 0:
                    buf, end = self.read_head(buf, fresh)
                    fresh = False
                    if end < 0:
                        return
                req, entries = parse(buf[:end])
            except BadRequest as exc:
                self.refuse(exc)
                return
            env = base.copy()
            env.update(entries)
            env["REMOTE_ADDR"] = remote_addr
            env["REMOTE_PORT"] = remote_port
            env[CLIENT_SOCKET] = sock
            env[BINDING] = binding
            env[RAW_HEADERS] = req.headers
            env[RELAY] = relay
            if req.length or req.chunked:
                body = Body(wire, buf[end + 4:], req.length, req.chunked, req.expect,
                            header_timeout)
                if req.chunked:
                    env["wsgi.input_terminated"] = True
            else:
                body = None
            env["wsgi.input"] = body or NO_BODY
            self._status = self._headers = self._raw = None
            self._sent = self._chunked = False
            self._close = req.close or server.draining
            self._head_only = req.method == "HEAD"
            self._version = req.version
            self.respond(app, env)
            if self._close:
                return
            if body is None:
                buf = buf[end + 4:]
            elif self.settle(body):
                buf = body.leftover()
            else:
                return

    def read_head(self, buf, fresh=False):
        """Read until a whole head is in the buffer: (buffer, index of its blank line).

        (b"", -1) when the connection should just close: the client closed,
        went quiet between requests past the idle timeout, or cut a head off.
        ``fresh``: a connection just accepted or woken from parking, whose bytes
        are most likely there already: the first read is tried at once.  Waiting
        for readability first, as between keep-alive requests, would cost such a
        connection a whole event-loop turn (~45 ms at wrk -c1000).
        """
        server = self.server
        wire = self.wire
        if not buf.lstrip(b"\r\n"):  # between requests: the idle wait
            if server.draining:
                return b"", -1
            idle = server.idle_timeout or None
            parks = idle is None or idle > PARK_AFTER
            self.idle = True
            try:
                read = wire.recv if fresh else wire.recv_wait
                buf = read(PARK_AFTER if parks else idle)
            except TimeoutError:
                if parks:
                    raise Idle() from None
                return b"", -1
            finally:
                self.idle = False
            if not buf:
                return b"", -1
        timeout = server.header_timeout or None
        deadline = None if timeout is None else gevent.get_hub().loop.now() + timeout
        while True:
            if buf[:1] in b"\r\n":  # empty lines before a request line (RFC 9112 2.2)
                buf = buf.lstrip(b"\r\n")
            end = buf.find(b"\r\n\r\n")
            if end > 0:
                return buf, end
            if len(buf) > http11.MAX_HEAD:
                raise HeadTooLarge("request head larger than %d bytes" % http11.MAX_HEAD)
            if len(buf) > http11.MAX_TARGET and b"\r\n" not in buf:
                raise TargetTooLong("request line longer than %d bytes" % http11.MAX_TARGET)
            left = None
            if deadline is not None:
                left = deadline - gevent.get_hub().loop.now()
                if left <= 0:
                    raise ClientTimeout("request head not complete within %.1f s" % timeout)
            try:
                data = wire.recv(left)
            except TimeoutError:
                raise ClientTimeout("request head not complete within %.1f s" % timeout) from None
            if not data:
                if buf.strip():  # cut off: never carried out; told so if it still listens
                    raise BadRequest("the request head ended before its blank line; "
                                     "nothing was forwarded")
                return b"", -1
            buf += data
            if buf.count(b"\n") != buf.count(b"\r\n"):
                raise BadRequest("a line ends in LF without CR")

    def settle(self, body):
        """After a response: True if the connection can take the next request.

        The rest of a body the app did not read is drained when small, so the
        connection stays usable; otherwise (or if reading it fails) it closes.
        """
        if body.done:
            return True
        try:
            drained = 0
            while not body.done and drained <= DRAIN_MAX:
                drained += len(body.read(DRAIN_MAX + 1))
        except (BadRequest, ClientTimeout, OSError):
            return False
        return body.done

    # --- the response -----------------------------------------------------------------

    def log_request(self):
        """No per-request log line here (--access-log is accesslog.AccessLogHandler's)."""

