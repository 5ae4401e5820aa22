"""geproxy.writer: writing one request's answer on a client connection.

The half of the connection handler that speaks PEP 3333's response side:
``start_response`` and ``write``, the app's result, and the head on the wire.

* The answer goes out in one send when the app returns its body whole; an
  app that streams (a generator, or ``write``) gets chunked framing on
  HTTP/1.1 when it gave no Content-Length, and its head flushed at once on
  ``write(b"")``; HEAD, 1xx, 204 and 304 answers never carry a body.
* ``relay`` (the ``headers.RELAY`` extension) sends a member's header block
  on as it came, instead of a list of headers built and joined again.
* ``refuse`` answers a request the handler will not pass on (4xx/5xx) and
  closes gently, so the client can read why.
"""

import logging

import gevent

from geproxy.errors import BadRequest, ClientGone, ClientTimeout

log = logging.getLogger("geproxy.handler")

LINGER = 1.0  # seconds a refused client gets to read its 4xx before the close
NO_BODY_STATUS = ("1", "204", "304")
TERMINATOR = b"0\r\n\r\n"
INTERNAL_ERROR = b'{"message":"httpproxy: internal error in the proxy"}'


class AnswerWriter:
    """Mixed into the connection handler, which provides ``wire``, ``server``,
    ``client_address`` and resets the per-request state below before each request."""

    _status = None
    _headers = None
    _raw = None  # a relayed member header block (bytes), instead of _headers
    _sent = False
    _chunked = False
    _close = False
    _head_only = False
    _version = "HTTP/1.1"

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
                                       if body else TERMINATOR)
                    return
            for data in result:
                if data:
                    self.write(data)
            if not self._sent:
                self.send_head(b"", complete=True)
            elif self._chunked:
                self.wire.send_all(TERMINATOR)
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
            self.send_head(INTERNAL_ERROR, complete=True)
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
        no_body = self._head_only or status[:3] in NO_BODY_STATUS or status[0] == "1"
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
                               + (TERMINATOR if complete else b""))
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
