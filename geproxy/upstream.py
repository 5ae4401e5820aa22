"""geproxy.upstream: the transport seam between forwarding and the members.

Forwarding only ever calls ``transport.request(...)`` and the three methods of
the response it gets back; everything about pools, timeouts and the HTTP client
library lives behind it.  Errors come out as two kinds, because the retry rule
depends on exactly this difference:

* ``ConnectError``: the request never left this process (connection refused,
  dial timeout, DNS): safe to send to another member whatever the method;
* ``UpstreamError`` (any other): bytes may have reached the member, so only
  idempotent reads may be retried elsewhere.

Transports are chosen by name (``--proxy-transport``) through ``TRANSPORTS``.
"""

import logging
from http.cookiejar import DefaultCookiePolicy

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

log = logging.getLogger("geproxy.upstream")

POOL_SIZE = 100000  # per member: never queue a watch behind a small pool
WATCH_STREAM_CHUNK = 65536


class UpstreamError(Exception):
    """The member gave no usable response; the request may have reached it."""

    sent = True


class ConnectError(UpstreamError):
    """No connection could be made: nothing was sent, any method may be retried."""

    sent = False


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


def _is_connect_failure(exc):
    """True if a requests/urllib3 error happened before any byte was sent."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectTimeout,
                            urllib3.exceptions.ConnectTimeoutError,  # NewConnectionError too
                            urllib3.exceptions.NameResolutionError,
                            ConnectionRefusedError)):
            return True
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt if nxt is not None else exc.__context__
    return False


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
        prep.body = body
        try:
            resp = self._session(base_url).send(prep, stream=True, allow_redirects=False,
                                                timeout=self._timeout)
        except Exception as exc:
            if _is_connect_failure(exc):
                raise ConnectError(str(exc)) from None
            if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError,
                                OSError)):
                raise UpstreamError(str(exc)) from None
            raise
        return _RequestsResponse(resp)

    def close(self):
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


TRANSPORTS = {
    RequestsTransport.name: RequestsTransport,
}


def make_transport(name, dial_timeout, write_timeout, read_timeout):
    return TRANSPORTS[name](dial_timeout=dial_timeout, write_timeout=write_timeout,
                            read_timeout=read_timeout)
