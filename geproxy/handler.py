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
  (endpoints.py), built from a copy of the server's base dict;
* the response goes out in one send when the app returns its body whole;
  an app that streams (a generator, or ``write``) gets chunked framing on
  HTTP/1.1 when it gave no Content-Length, and its head flushed at once on
  ``write(b"")``; HEAD, 1xx, 204 and 304 answers never carry a body;
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
from geproxy.logs import Every

log = logging.getLogger("geproxy.handler")

DRAIN_MAX = 64 << 10  # unread body bytes drained to keep a connection alive
PARK_AFTER = 1.0  # seconds an idle keep-alive connection keeps its greenlet before parking
LINGER = 1.0  # seconds a refused client gets to read its 4xx before the close
_NO_BODY_STATUS = ("1", "204", "304")
_TERMINATOR = b"0\r\n\r\n"
_INTERNAL_ERROR = b'{"message":"httpproxy: internal error in the proxy"}'


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


class Idle(Exception):
    """The connection has been idle for PARK_AFTER seconds: park it (see ``run``)."""


class ProxyHandler(pywsgi.WSGIHandler):
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
    _status = None
    _headers = None
    _raw = None  # a relayed member header block (bytes), instead of _headers
    _sent = False
    _chunked = False
    _close = False
    _head_only = False
    _version = "HTTP/1.1"

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
        """Wait for the next request without a greenlet; False if that is not possible."""
        server = self.server
        if server.draining or self.wire.tls:
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
        buf = b""
        while True:
            if buf[:1] in b"\r\n":  # empty lines before a request line (RFC 9112 2.2)
                buf = buf.lstrip(b"\r\n")
            end = buf.find(b"\r\n\r\n")
            try:
                if end <= 0:
                    buf, end = self.read_head(buf)
                    if end < 0:
                        return
                req = http11.parse_request(buf[:end].decode("latin-1"))
            except BadRequest as exc:
                self.refuse(exc)
                return
            path, query = _split_target(req.target)
            env = base.copy()
            env["REQUEST_METHOD"] = req.method
            env["PATH_INFO"] = path
            env["QUERY_STRING"] = query
            env["RAW_URI"] = env["REQUEST_URI"] = req.target
            env["SERVER_PROTOCOL"] = req.version
            env["REMOTE_ADDR"] = remote_addr
            env["REMOTE_PORT"] = remote_port
            env[CLIENT_SOCKET] = sock
            env[BINDING] = binding
            env[RAW_HEADERS] = req.headers
            env[RELAY] = relay
            names = http11.header_name
            for name, value in req.headers:
                key = names(name)[1]
                if key in env:
                    env[key] += "," + value
                else:
                    env[key] = value
            if "HTTP_CONTENT_TYPE" in env:
                env["CONTENT_TYPE"] = env.pop("HTTP_CONTENT_TYPE")
            if req.length is not None:
                del env["HTTP_CONTENT_LENGTH"]
                env["CONTENT_LENGTH"] = str(req.length)
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

    def read_head(self, buf):
        """Read until a whole head is in the buffer: (buffer, index of its blank line).

        (b"", -1) when the connection should just close: the client closed,
        went quiet between requests past the idle timeout, or cut a head off.
        """
        server = self.server
        wire = self.wire
        if not buf.lstrip(b"\r\n"):  # between requests: the idle wait
            if server.draining:
                return b"", -1
            idle = server.idle_timeout or None
            parks = not wire.tls and (idle is None or idle > PARK_AFTER)
            self.idle = True
            try:
                buf = wire.recv_wait(PARK_AFTER if parks else idle)
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

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self._sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        self._status = status
        self._headers = headers
        return self.write

    def relay(self, status, fields):
        """The RELAY extension: ``fields`` (bytes, "Name: value" lines joined by CRLF)
        become the answer's header block as they are.

        Used instead of start_response by an app that passes a member's answer
        on; the fields must frame the body themselves (a Content-Length, or
        an answer without a body) and hold no hop-by-hop header.
        """
        self._status = status
        self._raw = fields
        return self.write

    def respond(self, app, env):
        """Run the app for one request and write its answer."""
        result = None
        try:
            result = app(env, self.start_response)
            if type(result) is list:
                body = result[0] if len(result) == 1 else b"".join(result)
                if not self._sent:
                    self.send_head(body, complete=True)
                    return
                if self._chunked:  # the rest of an answer whose head went out early (a
                    # watch): its data and the end of the chunked body in one send
                    self.wire.send_all(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                                       if body else _TERMINATOR)
                    return
            for data in result:
                if data:
                    self.write(data)
            if not self._sent:
                self.send_head(b"", complete=True)
            elif self._chunked:
                self.wire.send_all(_TERMINATOR)
        except (ClientGone, ClientTimeout):
            raise
        except BadRequest as exc:  # the body turned out malformed while the app read it
            if self._sent:
                raise ConnectionError("bad request body after the answer started") from None
            self.refuse(exc)
            self._close = True
        except OSError:
            raise
        except Exception:
            log.exception("error answering %s %s", env.get("REQUEST_METHOD"),
                          env.get("RAW_URI"))
            if self._sent:
                raise ConnectionError("answer broken off after an error") from None
            self._status, self._headers = "500 Internal Server Error", [
                ("Content-Type", "application/json")]
            self._close = True
            self.send_head(_INTERNAL_ERROR, complete=True)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def write(self, data):
        """PEP 3333's write(): the head goes out first; ``write(b"")`` just flushes it."""
        if not self._sent:
            self.send_head(data, complete=False)
        elif data:
            if self._chunked:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            self.wire.send_all(data)

    def send_head(self, data, complete):
        """Status line and headers, with ``data`` (the body, or its first piece) in one send."""
        status, headers = self._status, self._headers
        if status is None:
            raise AssertionError("the app wrote before calling start_response")
        if self._raw is not None:
            return self.send_relayed(data)
        lines = ["HTTP/1.1 ", status]
        for name, value in headers:
            lines += "\r\n", name, ": ", value
        text = "".join(lines)
        lower = text.lower()
        no_body = self._head_only or status[:3] in _NO_BODY_STATUS or status[0] == "1"
        if "\r\nconnection: close" in lower:
            self._close = True
        extra = ""
        if "\r\ncontent-length:" not in lower and not no_body:
            if complete:
                extra = "\r\nContent-Length: %d" % len(data)
            elif self._version == "HTTP/1.1":
                self._chunked = True
                extra = "\r\nTransfer-Encoding: chunked"
            else:
                self._close = True  # HTTP/1.0: the body ends when the connection does
        if self._close:
            extra += "\r\nConnection: close"
        elif self._version == "HTTP/1.0":
            extra += "\r\nConnection: keep-alive"
        count = len(headers) + 1
        if text.count("\n") != count - 1 or text.count("\r") != count - 1:
            raise ValueError("a response header holds CR or LF")
        head = (text + extra + "\r\n\r\n").encode("latin-1")
        self._sent = True
        if no_body or not data:
            self.wire.send_all(head)
        elif self._chunked:
            self.wire.send_all(head + b"%x\r\n%s\r\n" % (len(data), data)
                               + (_TERMINATOR if complete else b""))
        else:
            self.wire.send_all(head + data)

    def send_relayed(self, data):
        """A relayed header block: it frames the body, only Connection is ours to add."""
        fields = self._raw
        if self._close:
            end = b"\r\nConnection: close\r\n\r\n" if fields else b"Connection: close\r\n\r\n"
        elif self._version == "HTTP/1.0":
            end = b"\r\nConnection: keep-alive\r\n\r\n" if fields else \
                b"Connection: keep-alive\r\n\r\n"
        else:
            end = b"\r\n\r\n" if fields else b"\r\n"
        self._sent = True
        head = b"HTTP/1.1 %s\r\n%s%s" % (self._status.encode("latin-1"), fields, end)
        self.wire.send_all(head + data if data and not self._head_only else head)

    def refuse(self, exc):
        """Answer a request the handler will not pass on (4xx/5xx), then close gently."""
        server = self.server
        client = self.client_address[0] if isinstance(self.client_address, tuple) else "unix"
        server.rejected("refused a request from %s: %s %s", client, exc.status, exc)
        text = ("%s: %s" % (exc.status, exc)).encode("latin-1", "replace")
        data = ("HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (exc.status, len(text))).encode("latin-1") + text
        wire = self.wire
        try:
            wire.send_all(data, LINGER)
            wire.shutdown_write()
            # read what the client still sends, so the close is not a reset
            # that destroys the answer before the client read it
            with gevent.Timeout(LINGER, False):
                while wire.recv(LINGER):
                    pass
        except OSError:
            pass

    def close_after_answer(self):
        """Close once the answer in progress is out (a graceful stop); its head says
        ``Connection: close`` if it is not out yet."""
        self._close = True

    def log_request(self):
        """No per-request log line here (--access-log is accesslog.AccessLogHandler's)."""

