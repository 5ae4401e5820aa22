"""A fake etcd member for tests: sees the exact bytes the proxy sends.

Real etcd cannot show some behaviours (a member that drops a request after
reading it, hop-by-hop headers in its answers, the raw request target), so
``FakeMember`` is a tiny HTTP/1.1 server on raw sockets (gevent
``StreamServer`` on 127.0.0.1, port 0) that records every request and answers
according to its ``behaviour``:

* ``"ok"`` (default): answer with ``status``/``headers``/``body`` of the
  instance (a JSON body with Content-Type and Content-Length unless changed);
  ``chunked=True`` sends the body (bytes or a list of pieces) as chunks;
* ``"drop"``: read the request completely, then close the connection without
  answering (a member that accepts a request and dies);
* ``"refuse"``: nothing listens: the port stays bound but not listening, so
  every connect is refused (and no other socket can take the port meanwhile);
* a callable ``behaviour(request)``: returns a ``Reply`` or ``None`` (drop).

``drop_after=N`` makes each connection answer N requests and then read one
more and close without answering it (a member that drops a request in the
middle of a pipeline); ``dropped`` lists those requests.

``GET /members`` is always answered with the fake itself as the one member
(and not recorded), so a proxy process can learn it from
``--initial-cluster fake=<url>`` (``initial_cluster``); so is ``GET
/v2/stats/self``, which names the fake the leader (the proxy's refresh asks).

Connections are kept alive as HTTP/1.1 allows, so pooled upstream connections
work.  Must run in a gevent-patched process (the proxy's client sockets have to
yield to this server's greenlets).
"""

import json
import socket

from gevent.server import StreamServer

from geproxy.values import host_port

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}
CLUSTER_ID = "cdf818194e3a8c32"  # what fake members answer in X-Etcd-Cluster-ID
DEFAULT_BODY = json.dumps({"action": "get", "node": {"key": "/fake", "value": "v"}}).encode()


class Request:
    """One request as received: method, raw target, headers in order, body."""

    __slots__ = ("method", "target", "version", "headers", "body", "chunked")

    def __init__(self, method, target, version, headers, body, chunked):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.chunked = chunked

    def header(self, name):
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header_names(self):
        return {n.lower() for n, _ in self.headers}

    def __repr__(self):
        return "Request(%s %s, %d headers, %d body bytes)" % (
            self.method, self.target, len(self.headers), len(self.body))


class Reply:
    """What the fake member answers: status, extra headers, body (bytes or pieces)."""

    def __init__(self, status=200, headers=(), body=DEFAULT_BODY, chunked=False,
                 content_type="application/json", reason=None):
        self.status = status
        self.reason = reason or REASONS.get(status, "Unknown")
        self.headers = list(headers)
        self.body = body
        self.chunked = chunked
        self.content_type = content_type

    def encode(self, method):
        lines = ["HTTP/1.1 %d %s" % (self.status, self.reason)]
        if self.content_type:
            lines.append("Content-Type: %s" % self.content_type)
        pieces = [self.body] if isinstance(self.body, bytes) else list(self.body)
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append("Content-Length: %d" % sum(len(p) for p in pieces))
        lines.extend("%s: %s" % (n, v) for n, v in self.headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method == "HEAD":
            return head
        if self.chunked:
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        else:
            body = b"".join(pieces)
        return head + body


class BadRequest(Exception):
    pass


def _read_line(rfile):
    line = rfile.readline(65537)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise BadRequest("line too long or connection closed mid-line")
    return line.rstrip(b"\r\n")


def read_request(rfile):
    """Parse one request from a binary file object; None at a clean EOF."""
    line = _read_line(rfile)
    while line == b"":  # tolerate empty lines between requests (RFC 9112 2.2)
        line = _read_line(rfile)
    if line is None:
        return None
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("bad request line %r" % line)
    method, target, version = (p.decode("latin-1") for p in parts)
    headers = []
    while True:
        line = _read_line(rfile)
        if line is None:
            raise BadRequest("connection closed in headers")
        if not line:
            break
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest("bad header line %r" % line)
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    lower = {n.lower(): v for n, v in headers}
    chunked = "chunked" in lower.get("transfer-encoding", "").lower()
    if chunked:
        body = _read_chunked(rfile)
    else:
        length = int(lower.get("content-length", "0") or 0)
        body = rfile.read(length) if length else b""
        if len(body) != length:
            raise BadRequest("connection closed in body")
    return Request(method, target, version, headers, body, chunked)


def _read_chunked(rfile):
    pieces = []
    while True:
        line = _read_line(rfile)
        if line is None:
            raise BadRequest("connection closed in chunk size")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while _read_line(rfile):  # trailers up to the empty line
                pass
            return b"".join(pieces)
        data = rfile.read(size)
        if len(data) != size or rfile.read(2) != b"\r\n":
            raise BadRequest("bad chunk")
        pieces.append(data)


class FakeMember:
    """A fake member on 127.0.0.1 (or ``host``); ``url``, ``requests``, ``close()``."""

    def __init__(self, behaviour="ok", status=200, headers=(), body=DEFAULT_BODY,
                 chunked=False, content_type="application/json", host="127.0.0.1",
                 drop_after=None):
        self.behaviour = behaviour
        self.drop_after = drop_after
        self.dropped = []
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.chunked = chunked
        self.content_type = content_type
        self.requests = []
        self.connections = 0
        self.errors = []
        self._server = None
        self._placeholder = None
        if behaviour == "refuse":
            # bound but never listening: connects get RST, the port stays ours
            self._placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._placeholder.bind(("127.0.0.1", 0))
            self.port = self._placeholder.getsockname()[1]
        else:
            self._server = StreamServer((host, 0), self._handle)
            self._server.start()
            self.port = self._server.address[1]
        self.url = "http://" + host_port(host, self.port)

    def __repr__(self):
        return "FakeMember(%s, %r)" % (self.url, self.behaviour)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    def members_reply(self):
        """What a peer URL answers to ``GET /members``: this fake as the only member."""
        body = json.dumps([{"id": 1, "name": "fake", "peerURLs": [self.url],
                            "clientURLs": [self.url]}]).encode()
        return Reply(headers=[("X-Etcd-Cluster-ID", CLUSTER_ID)], body=body)

    def stats_reply(self):
        """What a member answers to ``GET /v2/stats/self``: this fake leads."""
        body = json.dumps({"name": "fake", "id": "1", "state": "StateLeader",
                           "leaderInfo": {"leader": "1"}}).encode()
        return Reply(body=body)

    @property
    def initial_cluster(self):
        """``--initial-cluster`` for a proxy process in front of this fake (its /members)."""
        return "fake=" + self.url

    def reply_for(self, request):
        """The Reply for this request, or None to drop the connection."""
        if callable(self.behaviour):
            return self.behaviour(request)
        if self.behaviour == "drop":
            return None
        return Reply(self.status, self.headers, self.body, self.chunked, self.content_type)

    def _handle(self, sock, _address):
        self.connections += 1
        rfile = sock.makefile("rb")
        answered = 0
        try:
            while True:
                try:
                    request = read_request(rfile)
                except (BadRequest, ValueError) as exc:
                    self.errors.append(exc)
                    return
                if request is None:
                    return
                if request.method == "GET" and request.target == "/members":
                    sock.sendall(self.members_reply().encode("GET"))
                    continue
                if request.method == "GET" and request.target == "/v2/stats/self":
                    sock.sendall(self.stats_reply().encode("GET"))
                    continue
                self.requests.append(request)
                if answered == self.drop_after:
                    self.dropped.append(request)
                    return
                reply = self.reply_for(request)
                if reply is None:
                    return
                sock.sendall(reply.encode(request.method))
                answered += 1
                if (request.header("Connection") or "").lower() == "close" or \
                        request.version != "HTTP/1.1":
                    return
        except OSError as exc:
            self.errors.append(exc)
        finally:
            rfile.close()
            sock.close()
