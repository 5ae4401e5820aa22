"""Reading HTTP/1.1 responses off a raw socket, exactly as they arrived.

For tests that must see the bytes a proxy sent (no client library
normalising them) and for load generators with thousands of plain sockets,
where any client library costs more per connection than this does.
"""


class Reader:
    """Reads responses one after another from a connected socket (anything with ``recv``).

    Bytes read past the end of a response stay in ``buf`` for the next one.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self):
        """(status, [(lower-case name, value)]) of the next response head."""
        status = int(self.line().split(b" ", 2)[1])
        headers = []
        while True:
            line = self.line()
            if not line:
                return status, headers
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower().decode(), value.strip().decode()))

    def chunk(self):
        """One chunk's data of a chunked body (b"" for the last one)."""
        size = int(self.line().split(b";")[0], 16)
        data = self.take(size)
        if self.take(2) != b"\r\n":
            raise ValueError("chunk of %d bytes not followed by CRLF" % size)
        return data

    def body(self, fields):
        """The body after a head with these fields (a dict): chunked, by length, or to the close."""
        if fields.get("transfer-encoding", "").lower() == "chunked":
            pieces = []
            while True:
                piece = self.chunk()  # the last one ends with the message's empty line
                if not piece:
                    return b"".join(pieces)
                pieces.append(piece)
        if "content-length" in fields:
            return self.take(int(fields["content-length"]))
        while True:
            try:
                self._more()
            except EOFError:
                data, self.buf = self.buf, b""
                return data

    def response(self, method="GET"):
        """(status, headers dict, body) of the next whole response."""
        status, headers = self.head()
        fields = dict(headers)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, fields, b""
        return status, fields, self.body(fields)
