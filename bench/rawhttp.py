"""Reading HTTP/1.1 responses off raw sockets, for load generators with thousands of clients.

Cheaper per connection than any client library, and it shows exactly what
arrived: the bench's clients are plain (gevent) sockets that send canned
requests and read the answers with these.
"""


def _more(sock):
    data = sock.recv(65536)
    if not data:
        raise EOFError("connection closed mid-response")
    return data


def read_head(sock, buf=b""):
    """(status, {lower-case name: value}, rest of the buffer) of one response."""
    while b"\r\n\r\n" not in buf:
        buf += _more(sock)
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(None, 2)[1]), headers, buf


def read_body(sock, headers, buf=b""):
    """(body, rest of the buffer): Content-Length, chunked, or until the server closes."""
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            buf += _more(sock)
        return buf[:n], buf[n:]
    if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
        while True:
            try:
                buf += _more(sock)
            except EOFError:
                return buf, b""
    out = []
    while True:
        while b"\r\n" not in buf:
            buf += _more(sock)
        line, buf = buf.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        while len(buf) < size + 2:
            buf += _more(sock)
        if size == 0:
            return b"".join(out), buf[2:]
        out.append(buf[:size])
        buf = buf[size + 2:]


def read_response(sock, buf=b""):
    """(status, rest of the buffer) of one whole response, its body read and dropped."""
    status, headers, buf = read_head(sock, buf)
    _body, buf = read_body(sock, headers, buf)
    return status, buf
