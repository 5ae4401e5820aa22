"""geproxy.body: a request body as ``wsgi.input``, read strictly from the connection.

The connection handler has read the head and maybe more (the start of the
body, or a pipelined next request) into its buffer; ``Body`` serves the body
from that buffer and the socket, by Content-Length or by strict chunked
decoding (hex sizes without overflow, CRLF after each chunk's data, trailers
bounded and checked like header lines), and hands back whatever follows the
body for the next request.

Every read from the socket must make progress within ``timeout`` seconds
(``--proxy-client-header-timeout``): a client that stalls mid-body is cut
(``ClientTimeout``) instead of holding its connection forever.  A client
that sent ``Expect: 100-continue`` is told ``100 Continue`` on the first read,
not before: a request refused without reading its body never gets it.
"""

from geproxy import http11
from geproxy.errors import BadRequest, ClientTimeout

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_TRAILERS = 8 << 10  # bytes of trailer fields after the last chunk
MAX_CHUNK_LINE = 4 << 10  # bytes of one chunk-size line, extensions included


class Body:
    """``wsgi.input`` for one request: ``read``, ``readline``, iteration."""

    __slots__ = ("_wire", "_buf", "_left", "_chunked", "_expect", "_timeout", "done",
                 "_chunk_left")

    def __init__(self, wire, buf, length, chunked, expect, timeout):
        self._wire = wire
        self._buf = buf  # bytes read from the socket and not yet consumed
        self._left = length or 0  # Content-Length bytes still to come
        self._chunked = chunked
        self._expect = expect
        self._timeout = timeout
        self._chunk_left = 0  # data bytes left in the current chunk
        self.done = not chunked and not self._left  # the whole body was read

    def leftover(self):
        """What followed the body in the buffer (a pipelined request), once done."""
        return self._buf

    def _fill(self):
        """Read more from the socket into the buffer; BadRequest at EOF."""
        if self._expect:
            self._expect = False
            self._wire.send_all(CONTINUE, self._timeout)
        try:
            data = self._wire.recv(self._timeout)
        except TimeoutError:  # socket.timeout
            raise ClientTimeout("request body stalled") from None
        if not data:
            raise BadRequest("connection closed in the middle of the body")
        self._buf += data

    def read(self, size=-1):
        if self.done:
            return b""
        if self._chunked:
            return self._read_chunked(size)
        want = self._left if size is None or size < 0 else min(size, self._left)
        while len(self._buf) < want:
            self._fill()
        data, self._buf = self._buf[:want], self._buf[want:]
        self._left -= want
        self.done = not self._left
        return data

    def _line(self, limit):
        """One CRLF-terminated line from the buffer (without its CRLF)."""
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 2:]
                return line.decode("latin-1")
            if len(self._buf) > limit:
                raise BadRequest("chunk-size line or trailer too long")
            self._fill()

    def _read_chunked(self, size):
        out = []
        total = 0
        while size is None or size < 0 or total < size:
            if not self._chunk_left:
                n = http11.chunk_size(self._line(MAX_CHUNK_LINE))
                if n == 0:
                    self._trailers()
                    self.done = True
                    break
                self._chunk_left = n
            want = self._chunk_left
            if size is not None and size >= 0:
                want = min(want, size - total)
            while not self._buf:
                self._fill()
            piece, self._buf = self._buf[:want], self._buf[want:]
            out.append(piece)
            total += len(piece)
            self._chunk_left -= len(piece)
            if not self._chunk_left:
                while len(self._buf) < 2:
                    self._fill()
                if self._buf[:2] != b"\r\n":
                    raise BadRequest("chunk data not followed by CRLF")
                self._buf = self._buf[2:]
        return b"".join(out)

    def _trailers(self):
        """Trailer fields after the last chunk: checked like headers, then dropped."""
        size = 0
        while True:
            line = self._line(MAX_TRAILERS - size)
            if not line:
                return
            size += len(line) + 2
            if size > MAX_TRAILERS or http11.FIELD_LINES.fullmatch(line + "\r\n") is None:
                raise BadRequest("invalid or too large trailer section")

    def readline(self, size=-1):
        """One line (PEP 3333); byte by byte, as nothing on the hot path reads lines."""
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            byte = self.read(1)
            if not byte:
                break
            out += byte
            if byte == b"\n":
                break
        return bytes(out)

    def readlines(self, hint=-1):
        data = self.read()
        return data.splitlines(True)

    def __iter__(self):
        data = self.read()
        if data:
            yield data


class _NoBody:
    """``wsgi.input`` of a request without a body: shared, always empty."""

    __slots__ = ()
    done = True

    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def __iter__(self):
        return iter(())


NO_BODY = _NoBody()
