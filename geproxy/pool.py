"""geproxy.pool: the keep-alive connections to one member, for the native client.

* at most ``max_idle`` kept idle, newest reused first; no limit on connections
  in use (a watch holds one as long as it waits);
* an idle connection is checked with one non-blocking peek before reuse when
  it has been idle for over ``CHECK_AFTER`` seconds, or when the caller asks
  (before a write), so one the member closed meanwhile is dropped, not used;
* a member named by its IP address is dialled without a resolver; a dial's
  timeout is extended while the proxy's own loop lags (``lag``): in a
  burst of thousands of new watches on a busy machine, dials to all three
  members timed out together and all three were marked failed, so every
  client after them got 503 for the failure wait;
* a connection the idle set has no room for is closed by a ``Closer`` when the
  loop is idle, not at once: when 9,900 watches end together (a mass update of
  distinct keys), closing their ~6,800 surplus connections on the spot, between
  the deliveries, put the p99 delivery at a median of 53 ms (30-107) against
  33 ms (23-44) with the Closer (bench/README.md, "Watchers"); a TCP close here
  wakes the member.
"""

import socket
import time
from collections import deque
from urllib.parse import urlsplit

from gevent import socket as gsocket
from gevent.hub import get_hub

from geproxy import sockio
from geproxy.errors import ConnectError, connect_error
from geproxy.lag import EXTENSIONS, lagged

MAX_IDLE = 1024  # idle connections kept per member
CHECK_AFTER = 1.0  # seconds idle after which a pooled connection is peeked before reuse
CLOSE_BATCH = 32  # surplus connections the Closer closes per idle loop turn
CLOSE_MIN = 8  # and at least this many every CLOSE_TICK seconds, however busy the loop
CLOSE_TICK = 0.01
MAX_WAITING = 16384  # surplus connections waiting to close, past which they close at once


def ip_family(host):
    """AF_INET or AF_INET6 for an IP address literal, None for a host name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


class Closer:
    """Closes the connections pools hand it while the loop has nothing else to do.

    A connection the idle set has no room for is healthy and idle: nothing is
    lost by closing it a little later.  So they wait here and close in
    rounds of ``CLOSE_BATCH`` on every loop turn that brought no event (a
    libev idle watcher: after a burst, within milliseconds), and at least
    ``CLOSE_MIN`` every ``CLOSE_TICK`` s however busy the loop (a timer), so
    that a loop that never idles still closes them.  What waits was open while
    in use, so waiting adds no descriptor to the peak; past ``MAX_WAITING``
    they close at once.
    """

    def __init__(self):
        self.waiting = deque()  # (pool, wire)
        self._idle = self._timer = None

    def later(self, pool, wire):
        waiting = self.waiting
        if len(waiting) >= MAX_WAITING:
            pool.discard(wire)
            return
        waiting.append((pool, wire))
        if self._timer is None:
            loop = get_hub().loop
            self._idle = loop.idle(ref=False)
            self._idle.start(self.round, CLOSE_BATCH)
            self._timer = loop.timer(CLOSE_TICK, CLOSE_TICK, ref=False)
            self._timer.start(self.round, CLOSE_MIN)

    def round(self, count):
        """Close the next ``count`` of what waits; stop the watchers once none does."""
        waiting = self.waiting
        for _ in range(min(count, len(waiting))):
            pool, wire = waiting.popleft()
            pool.discard(wire)
        if not waiting:
            self._stop()

    def flush(self):
        """Close everything waiting now (the transport closes)."""
        self.round(len(self.waiting))

    def _stop(self):
        for watcher in (self._idle, self._timer):
            if watcher is not None:
                watcher.close()
        self._idle = self._timer = None


class Pool:
    """The connections to one member: idle ones, newest last, with when they went idle.

    ``closer``: the Closer that takes connections the idle set has no room
    for (the transport's, shared by its pools; by default one of its own).
    """

    __slots__ = ("base_url", "host", "address", "family", "tls_context", "server_hostname",
                 "idle", "max_idle", "open", "dial_timeout", "lag", "closer")

    def __init__(self, base_url, dial_timeout, tls_context=None, max_idle=MAX_IDLE, lag=None,
                 closer=None):
        parts = urlsplit(base_url)
        https = parts.scheme == "https"
        self.base_url = base_url
        self.host = parts.netloc
        self.address = (parts.hostname, parts.port or (443 if https else 80))
        self.family = ip_family(parts.hostname)
        self.tls_context = tls_context if https else None
        self.server_hostname = parts.hostname
        self.dial_timeout = dial_timeout
        self.idle = []  # [(wire, idle since)]
        self.max_idle = max_idle
        self.open = 0  # connections open to this member, idle or in use
        self.lag = lag  # the loop's LoopLag, or None
        self.closer = closer or Closer()

    def connect(self):
        """A new connection, as a Wire; ConnectError (nothing was sent) on failure."""
        try:
            sock = self._dial()
        except OSError as exc:  # refused, unreachable, dial timeout, DNS, EMFILE
            raise connect_error(self.base_url, exc) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.server_hostname)
            sock.settimeout(None)
        except OSError as exc:  # TLS handshake failed: nothing of the request was sent
            sock.close()
            raise ConnectError("%s: TLS: %s" % (self.base_url, exc)) from None
        self.open += 1
        return sockio.wire(sock)

    def _dial(self):
        """A connected socket.  A member named by its IP address is dialled directly:
        resolving it through gevent's resolver is a thread-pool round trip per
        connection that, when a burst of clients opens connections to the members
        together, limited a busy proxy to about 300 connects a second.  A host name is
        resolved on every connect, as Go does, and its addresses tried in turn."""
        if self.family is not None:
            return self._connect(self.family, self.address)
        host, port = self.address
        error = None
        for family, _, _, _, address in gsocket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            try:
                return self._connect(family, address)
            except OSError as exc:
                error = exc
        raise error or OSError("%s resolved to no address" % host)

    def _connect(self, family, address):
        """One address dialled, its timeout extended while the proxy's own loop lags."""
        sock = gsocket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.dial_timeout)
            started = time.monotonic()
            for extended in range(EXTENSIONS + 1):
                try:
                    sock.connect(address)  # again: waits on the same attempt
                    break
                except TimeoutError:
                    if extended == EXTENSIONS or not lagged(self.lag, started):
                        raise
        except OSError:
            sock.close()
            raise
        return sock

    def get(self, check):
        """(wire, reused): an idle connection (peeked first if ``check`` or idle long), or a new one."""
        idle = self.idle
        while idle:
            wire, since = idle.pop()
            if (check or time.monotonic() - since > CHECK_AFTER) and wire.ready() is not None:
                self.discard(wire)  # closed by the member, or bytes out of step
                continue
            return wire, True
        return self.connect(), False

    def release(self, wire, reusable, leftover):
        """A response is done with ``wire``: kept if it can carry another request."""
        if reusable and not leftover:
            self.put(wire)
        else:
            self.discard(wire)

    def put(self, wire):
        if len(self.idle) < self.max_idle:
            self.idle.append((wire, time.monotonic()))
        else:
            self.closer.later(self, wire)  # still counted in ``open`` until closed

    def discard(self, wire):
        self.open -= 1
        try:
            wire.close()
        except OSError:
            pass

    def close(self):
        idle, self.idle = self.idle, []
        for wire, _since in idle:
            self.discard(wire)
