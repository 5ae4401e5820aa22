"""geproxy.client: our own HTTP/1.1 client toward the members (the ``native`` transport).

Why not a library: every HTTP client measured here costs more CPU per
request than the whole rest of the proxy (geventhttpclient calls back into
Python once per header; requests/urllib3 several times more), and each would
do things a proxy must not: retry a write on a fresh connection after a send
error (geventhttpclient, up to pool size + 1 times), add a User-Agent, re-quote
the target.  This client does only what forwarding needs:

* one keep-alive pool per member (``geproxy.pool``);
* the request line, headers and body in one send, the target byte-exact;
* a strict response-head parse (``http11.parse_response``, once per distinct
  head: ``RESPONSES``); bodies by
  Content-Length, chunked (``stream()`` yields chunk by chunk as they
  arrive) or read to close; 1xx heads skipped;
* a connection goes back to the pool only after its response was read to the
  end; any other one is closed;
* timeouts: ``dial_timeout`` for the connect, ``write_timeout`` per send,
  ``read_timeout`` per read (0 = none, so quiet watches are not cut), and per
  request a ``head_timeout`` for the status line and headers.

Stale pooled connections: a member may close an idle connection just as a
request is written to it.  If a reused connection fails before any byte of
the answer arrived, a GET or HEAD is sent again on a fresh connection to the
same member; any other method may already have been applied, so it is never
sent again (``UpstreamError``, the app answers 502).  To make that rare, the
pool peeks at a connection idle for a while, or about to carry a write,
before it is used.

Pipelines: with ``pipelines`` > 0, a plain GET of keys goes on one of that
many shared connections to the member (``geproxy.pipeline``), read in turn;
a pipe that ends before its answer began sends it here again, on a
connection of its own.

Overload: the head timeout is measured from when the request was written; a
timeout that fires while the proxy's own event loop was lagging (``lag``) is
not the member's fault, so the wait goes on instead of failing the member.
"""

import time

from geproxy import http11, pipeline
from geproxy.errors import BadRequest, BadResponse, MemberTimeout, PipeBroken, UpstreamError
from geproxy.headers import HOP_BY_HOP, response_headers
from geproxy.lag import EXTENSIONS, lagged
from geproxy.pool import MAX_IDLE, Closer, Pool

RESPONSE_HEAD_MAX = 1 << 20
MAX_CHUNK_LINE = 8 << 10  # bytes of a chunk-size or trailer line
SAFE_TO_REPEAT = frozenset(("GET", "HEAD"))

_NO_BODY = frozenset((204, 304))
# member answer heads of this process, parsed once each (shared: read only)
RESPONSES = http11.HeadMemo(
    lambda head: http11.parse_response(head.decode("latin-1"), HOP_BY_HOP))


def request_head(method, target, headers, host, body):
    """The request line and headers as bytes: Host (the member's) only when none was
    given, Content-Length when a body comes without one; values cannot start a line."""
    lines = [method, " ", target, " HTTP/1.1"]
    has_host = has_length = False
    for name, value in headers:
        lower = http11.header_name(name)[0]
        if lower == "host":
            has_host = True
        elif lower == "content-length":
            has_length = True
        if "\n" in value or "\r" in value:
            value = " ".join(value.splitlines())
        lines += "\r\n", name, ": ", value
    if not has_host:
        lines += "\r\nHost: ", host
    if body and not has_length:
        lines += "\r\nContent-Length: ", str(len(body))
    lines.append("\r\n\r\n")
    return "".join(lines).encode("latin-1")


class _Stale(Exception):
    """A reused connection failed before any byte of the answer (internal to request())."""


class Response:
    """A member's answer after its head: ``status``, ``reason``, ``headers``, then the body.

    ``streaming`` is True when the body's length is unknown (chunked or read
    to close): the app then passes it on piece by piece.  ``read()`` returns
    the whole body; ``stream()`` yields it as it arrives; ``close()`` gives
    the connection back to its owner (the member's Pool, or the Pipe it came
    on), reusable only if the body was read completely.
    """

    __slots__ = ("status", "status_text", "raw_fields", "streaming", "relayable", "head_seconds",
                 "_head", "_owner", "_wire", "_buf", "_read_timeout", "_done", "_keeps")

    def __init__(self, owner, wire, head, raw_fields, buf, read_timeout, no_body, head_seconds):
        self._owner = owner
        self._wire = wire
        self._head = head
        self._buf = buf
        self._read_timeout = read_timeout
        self.status = head.status
        self.status_text = head.status_text
        self.raw_fields = raw_fields
        self.head_seconds = head_seconds
        self._done = no_body or head.length == 0
        self.streaming = not self._done and head.length is None
        # the connection outlives the answer: not closed by it, nor read to its close
        self._keeps = not head.close and (not self.streaming or head.chunked)
        # the member's own header block can go to the client unchanged when it
        # holds no hop-by-hop field and frames the body by length (or there is none)
        self.relayable = not head.flagged and not self.streaming

    @property
    def member(self):
        """The base URL of the member that answered."""
        return self._owner.base_url

    @property
    def reason(self):
        return self._head.reason

    @property
    def headers(self):
        return self._head.headers

    def forward_headers(self):
        """The headers to pass on: the member's list itself unless it holds hop-by-hop ones."""
        head = self._head
        return response_headers(head.headers) if head.flagged else head.headers

    def _read(self):
        """What the member sent next (b"" when it closed); UpstreamError if reading failed."""
        try:
            return self._wire.recv(self._read_timeout)
        except OSError as exc:
            raise UpstreamError("reading body from %s: %s" % (self._owner.base_url, exc)) from None

    def _recv(self):
        data = self._read()
        if not data:
            raise BadResponse("%s closed the connection in the middle of a body"
                              % self._owner.base_url)
        return data

    def read(self):
        """The whole body; the connection goes back to the pool (or is closed)."""
        try:
            if self._done:
                return b""
            if self._head.length is not None:
                return self._by_length()
            return b"".join(self._pieces())
        finally:
            self.close()

    def stream(self):
        """The body piece by piece, each chunk as soon as it arrived."""
        try:
            if not self._done:
                if self._head.length is not None:
                    yield self._by_length()
                else:
                    yield from self._pieces()
        finally:
            self.close()

    def _by_length(self):
        length = self._head.length
        buf = self._buf
        if len(buf) < length:
            pieces = [buf]
            size = len(buf)
            while size < length:
                data = self._recv()
                pieces.append(data)
                size += len(data)
            buf = b"".join(pieces)
        body, self._buf = buf[:length], buf[length:]
        self._done = True
        return body

    def _pieces(self):
        """A body of unknown length: chunked, or up to the end of the connection."""
        if not self._head.chunked:
            if self._buf:
                yield self._buf
                self._buf = b""
            data = self._read()
            while data:
                yield data
                data = self._read()
            self._done = True
            return
        while True:
            size = self._chunk_size()
            if size == 0:
                while self._line():  # trailer fields, up to the empty line: dropped
                    pass
                self._done = True
                return
            while size:  # pass each piece of the chunk on as it arrives
                if not self._buf:
                    self._buf = self._recv()
                piece = self._buf[:size]
                self._buf = self._buf[len(piece):]
                size -= len(piece)
                yield piece
            while len(self._buf) < 2:
                self._buf += self._recv()
            if self._buf[:2] != b"\r\n":
                raise BadResponse("%s: chunk data not followed by CRLF" % self._owner.base_url)
            self._buf = self._buf[2:]

    def _line(self):
        end = self._buf.find(b"\r\n")
        while end < 0:
            if len(self._buf) > MAX_CHUNK_LINE:
                raise BadResponse("%s: chunk-size or trailer line too long"
                                  % self._owner.base_url)
            self._buf += self._recv()
            end = self._buf.find(b"\r\n")
        line, self._buf = self._buf[:end], self._buf[end + 2:]
        return line

    def _chunk_size(self):
        try:
            return http11.chunk_size(self._line().decode("latin-1"))
        except BadRequest as exc:
            raise BadResponse("%s: %s" % (self._owner.base_url, exc)) from None

    def close(self):
        wire, self._wire = self._wire, None
        if wire is not None:
            self._owner.release(wire, self._done and self._keeps, self._buf)


class NativeTransport:
    """Our HTTP/1.1 client behind the transport seam (see ``upstream``)."""

    name = "native"

    def __init__(self, dial_timeout=1.0, write_timeout=5.0, read_timeout=0.0,
                 tls_context=None, lag=None, max_idle=MAX_IDLE, pipelines=0):
        self.dial_timeout = dial_timeout or None
        self.write_timeout = write_timeout or None
        self.read_timeout = read_timeout or None
        self.tls_context = tls_context
        self.lag = lag
        self.max_idle = max_idle
        self.pipelines = pipelines  # pipelined connections per member (geproxy.pipeline); 0: none
        self.pools = {}
        self.pipes = {}  # base URL -> pipeline.Pipes
        self.closer = Closer()  # the pools' surplus idle connections, closed while the loop idles

    def pool(self, base_url):
        pool = self.pools.get(base_url)
        if pool is None:
            pool = self.pools[base_url] = Pool(base_url, self.dial_timeout, self.tls_context,
                                               self.max_idle, self.lag, self.closer)
        return pool

    def request(self, base_url, method, target, headers, body, head_timeout=None):
        """Send one request; the Response once its head arrived.

        ConnectError if nothing was sent, MemberTimeout if the head did not
        come within ``head_timeout`` seconds (None: no limit), UpstreamError
        for any other failure.
        """
        pool = self.pools.get(base_url) or self.pool(base_url)
        data = request_head(method, target, headers, pool.host, body)
        if body:
            data += body
        repeatable = method in SAFE_TO_REPEAT
        if self.pipelines and pipeline.suits(method, target, body):
            pipes = self.pipes.get(base_url) or self._pipes(pool)
            if pipes.takes(target):
                began = time.monotonic()
                try:
                    return self._piped(pipes, pool, target, data, head_timeout)
                except PipeBroken:
                    pass  # a GET whose answer had not begun: on a connection of its own below
                if head_timeout is not None:  # what is left of it: a hung member fails in one
                    head_timeout -= time.monotonic() - began
                    if head_timeout <= 0:
                        raise MemberTimeout("no answer within %d ms (in line on a pipeline)"
                                            % ((time.monotonic() - began) * 1000)) from None
        wire, reused = pool.get(check=not repeatable)
        try:
            return self._exchange(pool, wire, data, method, head_timeout, reused)
        except _Stale as exc:
            if not repeatable:
                raise UpstreamError("%s: pooled connection failed (%s); not sent again"
                                    % (base_url, exc.__cause__ or exc)) from None
        wire = pool.connect()
        try:
            return self._exchange(pool, wire, data, method, head_timeout, False)
        except _Stale as exc:  # cannot happen on a fresh connection; be safe anyway
            raise UpstreamError("%s: %s" % (base_url, exc)) from None

    def _pipes(self, pool):
        pipes = self.pipes[pool.base_url] = pipeline.Pipes(pool, self.pipelines)
        return pipes

    def _piped(self, pipes, pool, target, data, head_timeout):
        """Send a GET on one of the member's pipes; the Response once its head arrived.

        PipeBroken when the pipe ended before this answer began.  The body of
        a pipelined answer is read with the head timeout per read when there
        is no read timeout: the answers behind it wait for it.
        """
        pipe = pipes.pick()
        waiter, first = pipe.submit(data, self.write_timeout)
        written = time.monotonic()
        buf = pipe.wait_turn(waiter, first)
        wire = pipe.wire
        ok = False
        try:
            head, raw_fields, buf = self._read_head(pool, wire, head_timeout, True, written, buf,
                                                    eager=not first)
            ok = True
        except _Stale:
            raise PipeBroken() from None
        finally:
            if not ok:
                pipe.release(wire, False, b"")
        no_body = head.status in _NO_BODY
        streamed = head.length is None and not no_body
        owner = pipe
        if streamed or head.close:
            owner = pipe.hand_over()  # nothing behind it can be read before it ends
            if streamed:
                pipes.streams(target)
        return Response(owner, wire, head, raw_fields, buf, self.read_timeout or head_timeout,
                        no_body, time.monotonic() - written)

    def _exchange(self, pool, wire, data, method, head_timeout, reused):
        """Write the request and read the head on ``wire``; it is closed on any failure."""
        ok = False
        try:
            try:
                wire.send_all(data, self.write_timeout)
            except OSError as exc:
                if reused and not isinstance(exc, TimeoutError):
                    raise _Stale("send: %s" % exc) from exc
                raise UpstreamError("sending to %s: %s" % (pool.base_url, exc)) from None
            written = time.monotonic()
            head, raw_fields, buf = self._read_head(pool, wire, head_timeout, reused, written)
            ok = True
            no_body = method == "HEAD" or head.status in _NO_BODY
            return Response(pool, wire, head, raw_fields, buf, self.read_timeout, no_body,
                            time.monotonic() - written)
        finally:
            if not ok:
                pool.discard(wire)

    def _read_head(self, pool, wire, head_timeout, reused, written, buf=b"", eager=False):
        """(parsed head, its header block as bytes, bytes after it), skipping 1xx heads.

        ``buf``: what was read of it already; ``eager``: it is likely there, so
        read before waiting for readability (after a pipelined answer).
        """
        timeout = head_timeout
        if self.read_timeout is not None and (timeout is None or self.read_timeout < timeout):
            timeout = self.read_timeout
        extended = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = RESPONSES(buf[:end])
                line_end = buf.find(b"\r\n", 0, end)
                raw_fields = buf[line_end + 2:end] if line_end >= 0 else b""
                buf = buf[end + 4:]
                if 100 <= head.status < 200:
                    if head.status == 101:
                        raise BadResponse("%s switched protocols" % pool.base_url)
                    continue  # an interim answer: the real one follows
                return head, raw_fields, buf
            if len(buf) > RESPONSE_HEAD_MAX:
                raise BadResponse("%s sent a response head over %d bytes"
                                  % (pool.base_url, RESPONSE_HEAD_MAX))
            try:
                data = wire.recv(timeout) if buf or eager else wire.recv_wait(timeout)
            except TimeoutError:
                if extended < EXTENSIONS and (
                        wire.ready() is not None or lagged(self.lag, written)):
                    # the answer is there (the timer fired first in a busy loop turn),
                    # or our own loop was late: not the member's fault, wait on
                    extended += 1
                    continue
                raise MemberTimeout("no answer within %d ms" % (timeout * 1000)) from None
            except OSError as exc:
                if reused and not buf:
                    raise _Stale("read: %s" % exc) from exc
                raise UpstreamError("reading from %s: %s" % (pool.base_url, exc)) from None
            if not data:
                if reused and not buf:
                    raise _Stale("closed by the member")
                raise BadResponse("%s closed the connection before a complete answer"
                                  % pool.base_url)
            buf += data

    def close(self):
        """Close the idle pooled connections and the pipes (ones in use close when released)."""
        for pipes in self.pipes.values():
            pipes.close()
        self.pipes.clear()
        self.closer.flush()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
