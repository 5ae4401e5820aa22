"""geproxy.upstream: the transport seam between forwarding and the members.

Forwarding only ever calls ``transport.request(base_url, method, target,
headers, body, head_timeout)`` and what the response it gets back offers
(``status``, ``reason``, ``headers``, ``streaming``, ``read()``,
``stream()``, ``close()``); everything about pools, timeouts, TLS and the
HTTP client lives behind it.  Errors come out as kinds from
``geproxy.errors``, because the retry rule depends on exactly this difference:

* ``ConnectError``: the request never left this process (connection refused,
  dial timeout, DNS, TLS handshake): safe to send to another member whatever
  the method;
* ``MemberTimeout``: no answer head within ``head_timeout``;
* ``UpstreamError`` (any other): bytes may have reached the member, so only
  idempotent reads may be retried elsewhere.

Two transports, chosen by name (``--proxy-transport``) through
``TRANSPORTS``; the first is the default:

* ``native`` (``geproxy.client``): our own keep-alive HTTP/1.1 client, the
  fast one;
* ``requests``: a ``requests.Session`` per member, the original design,
  kept selectable and tested with the same forwarding tests.
"""

import logging
from http.cookiejar import DefaultCookiePolicy

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from geproxy.client import NativeTransport
from geproxy.errors import (MemberTimeout, OutOfFiles, UpstreamError, causes,
                            connect_error)
from geproxy.headers import response_headers
from geproxy.tls import ContextAdapter

log = logging.getLogger("geproxy.upstream")

POOL_SIZE = 100000  # per member: never queue a watch behind a small pool
WATCH_STREAM_CHUNK = 65536


class UpstreamResponse:
    """What a transport returns once the member's status line and headers arrived.

    ``headers`` is a list of (name, value) with repeated headers kept apart;
    ``streaming`` is True when the body's length is unknown (chunked or up to
    the close), so forwarding passes it on piece by piece.  ``read()``
    returns the whole body; ``stream()`` yields pieces as they arrive (one
    etcd watch event at a time); ``close()`` drops the connection unless the
    body was read completely.
    """

    status = 0
    reason = ""
    headers = ()
    streaming = False
    relayable = False  # raw_fields may go to the client as they are (see headers.RELAY)
    raw_fields = b""
    head_seconds = None  # from writing the request until the answer's head was in
    member = ""  # the base URL of the member that answered

    @property
    def status_text(self):
        """The status as WSGI's start_response wants it: "200 OK"."""
        return "%d %s" % (self.status, self.reason)

    def forward_headers(self):
        """The headers to pass on to the client: all but the hop-by-hop ones."""
        return response_headers(self.headers)

    def read(self):
        raise NotImplementedError

    def stream(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


# --- requests -----------------------------------------------------------------------


class _RequestsResponse(UpstreamResponse):
    __slots__ = ("_resp", "status", "reason", "headers", "streaming", "member", "head_seconds")

    def __init__(self, resp, method, member):
        self._resp = resp
        self.member = member
        raw = resp.raw
        self.status = raw.status
        self.reason = raw.reason or ""
        self.headers = list(raw.headers.items())
        self.streaming = (method != "HEAD" and raw.status not in (204, 304)
                          and raw.headers.get("Content-Length") is None)
        self.head_seconds = resp.elapsed.total_seconds()

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


_CONNECT_FAILURES = (requests.exceptions.ConnectTimeout,
                     requests.exceptions.SSLError,
                     urllib3.exceptions.ConnectTimeoutError,  # NewConnectionError too
                     urllib3.exceptions.NameResolutionError,
                     ConnectionRefusedError)


def _is_connect_failure(exc):
    """True if a requests/urllib3 error happened before any byte was sent."""
    return any(isinstance(e, _CONNECT_FAILURES) for e in causes(exc))


class RequestsTransport:
    """A requests.Session per member (the first transport geproxy had; kept selectable).

    Sessions are made once per member and kept; ``trust_env`` is off so no
    proxy variables, netrc or CA bundle lookups happen per request, cookies are
    never stored, and the pool is sized so watches never queue.
    """

    name = "requests"

    def __init__(self, dial_timeout=1.0, write_timeout=5.0, read_timeout=0.0,
                 tls_context=None, pool_size=POOL_SIZE):
        # requests has one socket timeout for reads and writes; reads win,
        # because a read timeout would cut watches. None means no limit.
        self._dial_timeout = dial_timeout or None
        self._read_timeout = read_timeout or None
        self._tls_context = tls_context
        self._pool_size = pool_size
        self._sessions = {}

    def _session(self, base_url):
        session = self._sessions.get(base_url)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.headers.clear()
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = ContextAdapter(self._tls_context, pool_connections=1,
                                      pool_maxsize=self._pool_size, pool_block=False,
                                      max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions[base_url] = session
        return session

    def request(self, base_url, method, target, headers, body, head_timeout=None):
        """Send one request to ``base_url``; return an UpstreamResponse after headers.

        requests has one read timeout for every read, so ``head_timeout``
        bounds the body's reads too (non-watch bodies arrive with the head).
        """
        read_timeout = self._read_timeout
        if head_timeout is not None and (read_timeout is None or head_timeout < read_timeout):
            read_timeout = head_timeout
        prep = requests.PreparedRequest()
        prep.method = method
        prep.url = base_url + target  # byte-exact: skip requests' URL re-quoting
        prep.headers = CaseInsensitiveDict(headers)
        prep.body = body or None  # b"" would make urllib3 send an empty chunked body
        try:
            resp = self._session(base_url).send(prep, stream=True, allow_redirects=False,
                                                timeout=(self._dial_timeout, read_timeout))
        except Exception as exc:
            error = connect_error(base_url, exc)
            if isinstance(error, OutOfFiles) or _is_connect_failure(exc):
                raise error from None
            if isinstance(exc, requests.exceptions.ReadTimeout):
                raise MemberTimeout("no answer within %d ms" % (read_timeout * 1000)) from None
            if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError,
                                OSError)):
                raise UpstreamError(str(exc)) from None
            raise
        return _RequestsResponse(resp, method, base_url)

    def close(self):
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


TRANSPORTS = {  # the first is the default
    NativeTransport.name: NativeTransport,
    RequestsTransport.name: RequestsTransport,
}


def make_transport(name, dial_timeout, write_timeout, read_timeout, tls_context=None, lag=None,
                   pipelines=0):
    if name == NativeTransport.name:
        return NativeTransport(dial_timeout=dial_timeout, write_timeout=write_timeout,
                               read_timeout=read_timeout, tls_context=tls_context, lag=lag,
                               pipelines=pipelines)
    return TRANSPORTS[name](dial_timeout=dial_timeout, write_timeout=write_timeout,
                            read_timeout=read_timeout, tls_context=tls_context)
