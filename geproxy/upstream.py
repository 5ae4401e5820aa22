"""geproxy.upstream: the transport seam between forwarding and the members.

Forwarding only ever calls ``transport.request(...)`` and the three methods of
the response it gets back; everything about pools, timeouts and the HTTP client
library lives behind it.  Errors come out as two kinds, because the retry rule
depends on exactly this difference:

* ``ConnectError``: the request never left this process (connection refused,
  dial timeout, DNS): safe to send to another member whatever the method;
* ``UpstreamError`` (any other): bytes may have reached the member, so only
  idempotent reads may be retried elsewhere.

Transports are chosen by name (``--proxy-transport``) through ``TRANSPORTS``;
the first one is the default.
"""

import errno
import logging
import re
import socket
from http.client import HTTPException
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import urlsplit

import requests
import urllib3
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPSocketPoolResponse
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

log = logging.getLogger("geproxy.upstream")

POOL_SIZE = 100000  # per member: never queue a watch behind a small pool
WATCH_STREAM_CHUNK = 65536
RECV_SIZE = 65536  # geventhttpclient reads 4 KiB at a time by default


class UpstreamError(Exception):
    """The member gave no usable response; the request may have reached it."""

    sent = True


class ConnectError(UpstreamError):
    """No connection could be made: nothing was sent, any method may be retried."""

    sent = False


class OutOfFiles(ConnectError):
    """This process had no file descriptor for the connection: not the member's fault."""


class UpstreamResponse:
    """What a transport returns once the member's status line and headers arrived.

    ``headers`` is a list of (name, value) with repeated headers kept apart.
    ``read()`` returns the whole body; ``stream()`` yields pieces as they arrive
    (one etcd watch event at a time); ``close()`` drops the connection unless
    the body was read completely.
    """

    status = 0
    reason = ""
    headers = ()

    def read(self):
        raise NotImplementedError

    def stream(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


# --- requests -----------------------------------------------------------------------


class _RequestsResponse(UpstreamResponse):
    __slots__ = ("_resp", "status", "reason", "headers")

    def __init__(self, resp):
        self._resp = resp
        raw = resp.raw
        self.status = raw.status
        self.reason = raw.reason or ""
        self.headers = list(raw.headers.items())

    def read(self):
        try:
            return self._resp.raw.read(decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamError("reading body: %s" % exc) from None
        finally:
            self._resp.close()

    def stream(self):
        try:
            yield from self._resp.raw.stream(WATCH_STREAM_CHUNK, decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamError("reading body: %s" % exc) from None

    def close(self):
        self._resp.close()


def _causes(exc):
    """exc and what it wraps (requests -> urllib3 -> OSError chains), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt if nxt is not None else (exc.__cause__ or exc.__context__)


_CONNECT_FAILURES = (requests.exceptions.ConnectTimeout,
                     urllib3.exceptions.ConnectTimeoutError,  # NewConnectionError too
                     urllib3.exceptions.NameResolutionError,
                     ConnectionRefusedError)


def _is_connect_failure(exc):
    """True if a requests/urllib3 error happened before any byte was sent."""
    return any(isinstance(e, _CONNECT_FAILURES) for e in _causes(exc))


def connect_error(base_url, exc):
    """The ConnectError for a failed connect: OutOfFiles when the proxy lacked a descriptor."""
    if any(isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE)
           for e in _causes(exc)):
        return OutOfFiles("%s: %s" % (base_url, exc))
    return ConnectError("%s: %s" % (base_url, exc))


class RequestsTransport:
    """A requests.Session per member (the user's original design).

    Sessions are made once per member and kept; ``trust_env`` is off so no
    proxy variables, netrc or CA bundle lookups happen per request, cookies are
    never stored, and the pool is sized so watches never queue.
    """

    name = "requests"

    def __init__(self, dial_timeout=1.0, write_timeout=5.0, read_timeout=0.0,
                 pool_size=POOL_SIZE):
        # requests has one socket timeout for reads and writes; reads win,
        # because a read timeout would cut watches. None means no limit.
        self._timeout = (dial_timeout or None, read_timeout or None)
        self._pool_size = pool_size
        self._sessions = {}

    def _session(self, base_url):
        session = self._sessions.get(base_url)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.headers.clear()
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool_size,
                                  pool_block=False, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions[base_url] = session
        return session

    def request(self, base_url, method, target, headers, body):
        """Send one request to ``base_url``; return an UpstreamResponse after headers."""
        prep = requests.PreparedRequest()
        prep.method = method
        prep.url = base_url + target  # byte-exact: skip requests' URL re-quoting
        prep.headers = CaseInsensitiveDict(headers)
        prep.body = body or None  # b"" would make urllib3 send an empty chunked body
        try:
            resp = self._session(base_url).send(prep, stream=True, allow_redirects=False,
                                                timeout=self._timeout)
        except Exception as exc:
            error = connect_error(base_url, exc)
            if isinstance(error, OutOfFiles) or _is_connect_failure(exc):
                raise error from None
            if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError,
                                OSError)):
                raise UpstreamError(str(exc)) from None
            raise
        return _RequestsResponse(resp)

    def close(self):
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


# --- geventhttpclient -------------------------------------------------------------------


class _WireHeaders(list):
    """Response headers as (name, value) in wire order, repeated names kept apart.

    Given to the parser as its ``headers_type``; it only calls ``add`` (and
    ``clear`` after a 1xx).  Cheaper than its case-insensitive ``Headers``,
    which also groups repeated names together.
    """

    __slots__ = ()

    def add(self, name, value):
        self.append((name, value))

    def items(self):
        return iter(self)


class _GeventResponse(UpstreamResponse):
    __slots__ = ("_resp", "status", "reason", "headers")

    def __init__(self, resp):
        self._resp = resp
        self.status = resp.status_code
        self.reason = resp.status_message or ""
        self.headers = resp.info()  # the _WireHeaders list

    def read(self):
        try:
            return self._resp.read()  # releases the connection on errors
        except (OSError, HTTPException) as exc:
            raise UpstreamError("reading body: %s" % exc) from None

    def stream(self):
        """One newline-terminated piece (an etcd event) at a time, as it arrives.

        ``read(n)`` would wait until n bytes are buffered, holding events
        back; ``readline`` returns as soon as a line is complete.  Whatever
        follows the last newline is returned once the body has ended.
        """
        resp = self._resp
        try:
            while True:
                line = resp.readline(b"\n")
                if not line:
                    break
                yield line
            rest = resp.read()
        except (OSError, HTTPException) as exc:
            raise UpstreamError("reading body: %s" % exc) from None
        if rest:
            yield rest

    def close(self):
        self._resp.release()  # back to the pool only if the body was read completely


# RFC 9112 5.2: a proxy replaces obsolete line folding (pywsgi keeps it inside
# the value) with a space before forwarding.  This also makes sure no value can
# start a header line of its own.
_LINE_BREAKS = re.compile(r"[\r\n]+[ \t]*")


def _request_head(method, target, headers, host, body):
    """The request line and headers, exactly as given.

    Only what HTTP/1.1 requires is added: Host (the member's) when none was
    given, Content-Length when a body comes without one.
    """
    lines = ["%s %s HTTP/1.1\r\n" % (method, target)]
    has_host = has_length = False
    for name, value in headers:
        if "\n" in value or "\r" in value:
            value = _LINE_BREAKS.sub(" ", value)
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length":
            has_length = True
        lines.append("%s: %s\r\n" % (name, value))
    if not has_host:
        lines.insert(1, "Host: %s\r\n" % host)
    if body and not has_length:
        lines.append("Content-Length: %d\r\n" % len(body))
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _PeekAlive:
    """Pool mixin: check an idle pooled connection with one non-blocking peek.

    The library asks ``select()`` on every reuse (a poll set up and torn down
    per request); a peek at the kernel socket answers the same question
    (readable while idle means closed or out of step) in one system call.
    """

    def _is_socket_alive(self, sock):
        raw = getattr(sock, "_sock", sock)
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: idle and alive
        except (OSError, ValueError):
            return False
        return False  # b"" (closed by the member) or stray bytes: not reusable


class _Pool(_PeekAlive, ConnectionPool):
    pass


class _SSLPool(_PeekAlive, SSLConnectionPool):
    pass


class GeventHTTPClientTransport:
    """geventhttpclient's connection pool and C parser, one pool per member.

    About 3x less proxy CPU per request than requests (notes section 2.1).
    Its ``HTTPClient`` front is not used, for two behaviours a proxy must not
    have: it retries a request on a fresh connection after a send or read
    error, up to pool size + 1 times, PUT and DELETE included (a write must
    never be replayed); and it adds a ``User-Agent`` the client did not send.
    So the request head is written here, byte-exact (the raw target is never
    re-quoted) and in one ``sendall`` with the body, and the response is
    parsed by ``HTTPSocketPoolResponse``, which returns the connection to the
    pool only when the body was read completely.

    The pool is large (its default of 1 would queue every request behind one
    watch).  Timeouts are per socket operation: ``dial_timeout`` for the
    connect, ``write_timeout`` for sending the request, ``read_timeout`` for
    every read after it; 0 means none, so quiet watches are never cut unless
    --proxy-read-timeout asks for it (the library's default is 5 s).
    """

    name = "geventhttpclient"

    def __init__(self, dial_timeout=1.0, write_timeout=5.0, read_timeout=0.0,
                 pool_size=POOL_SIZE):
        self._dial_timeout = dial_timeout or None
        self._write_timeout = write_timeout or None
        self._read_timeout = read_timeout or None
        self._pool_size = pool_size
        self._pools = {}  # base_url -> (pool, Host header value)

    def _pool(self, base_url):
        entry = self._pools.get(base_url)
        if entry is None:
            parts = urlsplit(base_url)
            https = parts.scheme == "https"
            port = parts.port or (443 if https else 80)
            pool_class = _SSLPool if https else _Pool
            pool = pool_class(parts.hostname, port, parts.hostname, port,
                              size=self._pool_size,
                              connection_timeout=self._dial_timeout,
                              network_timeout=self._read_timeout)
            entry = self._pools[base_url] = (pool, parts.netloc)
        return entry

    def request(self, base_url, method, target, headers, body):
        """Send one request to ``base_url``; return an UpstreamResponse after headers."""
        pool, host = self._pool(base_url)
        head = _request_head(method, target, headers, host, body)
        try:
            sock = pool.get_socket()  # a pooled connection, or a new one
        except (OSError, RuntimeError) as exc:  # refused, dial timeout, DNS, pool closed
            raise connect_error(base_url, exc) from None
        try:
            sock.settimeout(self._write_timeout)
            sock.sendall(head + body if body else head)
            sock.settimeout(self._read_timeout)
        except BaseException as exc:  # incl. gevent.Timeout and kills: never leak the socket
            pool.release_socket(sock)
            if isinstance(exc, OSError):
                raise UpstreamError("sending to %s: %s" % (base_url, exc)) from None
            raise
        try:
            resp = HTTPSocketPoolResponse(sock, pool, block_size=RECV_SIZE, method=method,
                                          headers_type=_WireHeaders)
        except (OSError, HTTPException) as exc:  # the response released the socket
            raise UpstreamError("response from %s: %s" % (base_url, exc)) from None
        return _GeventResponse(resp)

    def close(self):
        """Close the idle pooled connections (ones in use close when released)."""
        for pool, _host in self._pools.values():
            pool.close()
        self._pools.clear()


TRANSPORTS = {  # the first is the default
    GeventHTTPClientTransport.name: GeventHTTPClientTransport,
    RequestsTransport.name: RequestsTransport,
}


def make_transport(name, dial_timeout, write_timeout, read_timeout):
    return TRANSPORTS[name](dial_timeout=dial_timeout, write_timeout=write_timeout,
                            read_timeout=read_timeout)
