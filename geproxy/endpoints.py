"""geproxy.endpoints: which member client URLs may take a request, in what order.

Membership hands this module a fresh list of client URLs on every refresh;
forwarding asks it for the available endpoints and reports transport failures.
A failed endpoint is skipped for ``failure_wait`` seconds and then tried again
(etcd's ``--proxy-failure-wait``).  Unlike the Go proxy, a refresh keeps those
failure marks: a member that just failed does not come back early because the
member list was re-read.

Spreading load (``--proxy-balance least-connections``, the default): the Go
proxy sends everything to the first available endpoint until the next
reshuffle, so one proxy loads one member.  Here each client connection gets a
``Binding`` to the available endpoint with the fewest bound connections (ties
go to the shuffled order); its requests stay there while that endpoint is
available, so one connection sees monotonic reads, and move when it fails.

Writes go to the leader (least-connections only): membership learns which
member leads (``set_leader``), and a request that may change the store is
tried there first, which spares a follower forwarding it (an extra hop for
the write, and CPU on both members).  Its connection is bound to the leader
from then on: a follower answers a write only once it has applied it, the
leader too, so reads after a write on the same connection keep seeing it.
Connections that only read stay spread.  A leader that is not known, or not
available, changes nothing.

The leader is learned again at once, not only on the next refresh, when it
may have changed (``leader_doubted``): when the leader is marked failed, and
when a member's answer to a write names a raft term higher than any seen
(``note_term``), which only an election makes.
"""

import random
import time

from gevent.event import Event

BINDING = "geproxy.binding"  # environ key of the client connection's Binding


class Endpoint:
    """One member client URL and, if it failed recently, when it may be retried."""

    __slots__ = ("url", "failed_until", "bound")

    def __init__(self, url):
        self.url = url
        self.failed_until = 0.0
        self.bound = 0  # client connections currently bound here

    def __repr__(self):
        return "Endpoint(%r)" % self.url


class EndpointSet:
    """The current endpoints in shuffled order, with failure marks."""

    def __init__(self, failure_wait, balance="least-connections", clock=time.monotonic,
                 rng=None):
        self.failure_wait = failure_wait
        self.balance = balance
        self._clock = clock
        self._rng = rng or random.Random()
        self._endpoints = []
        self._available = []  # cached until a mark expires or the list changes
        self._recheck_at = float("-inf")
        self.leader_urls = frozenset()  # the leading member's client URLs, if known
        self.term = 0  # the highest raft term a member's answer named
        self.leader_doubted = Event()  # set when the leader may have changed

    def replace(self, urls, shuffle=True):
        """Take a new URL list (from a refresh), shuffle it, keep failure marks.

        ``shuffle=False`` keeps the given order (tests that need to know it).
        """
        old = {ep.url: ep for ep in self._endpoints}
        fresh = []
        for url in dict.fromkeys(urls):  # de-duplicate, keep first occurrence
            fresh.append(old.get(url) or Endpoint(url))
        if shuffle:
            self._rng.shuffle(fresh)
        self._endpoints = fresh
        self._recheck_at = float("-inf")

    def all(self):
        return list(self._endpoints)

    def set_leader(self, urls):
        """The client URLs of the member that leads now (empty: not known)."""
        self.leader_urls = frozenset(urls)

    def note_term(self, term):
        """A member answered in raft ``term``: a term not seen before means an election."""
        if term > self.term:
            self.term = term
            self.leader_doubted.set()

    def leader(self):
        """The leader's first available endpoint, or None."""
        urls = self.leader_urls
        if urls:
            for ep in self.available():
                if ep.url in urls:
                    return ep
        return None

    def available(self):
        """Endpoints not marked failed, in the current shuffled order (do not modify it).

        Worked out again only when the list changed or a failure mark ran
        out, not per request.
        """
        now = self._clock()
        if now >= self._recheck_at:
            self._available = [ep for ep in self._endpoints if ep.failed_until <= now]
            self._recheck_at = min((ep.failed_until for ep in self._endpoints
                                    if ep.failed_until > now), default=float("inf"))
        return self._available

    def failed(self):
        """(endpoint, seconds until retry) for endpoints currently skipped."""
        now = self._clock()
        return [(ep, ep.failed_until - now) for ep in self._endpoints
                if ep.failed_until > now]

    def mark_failed(self, endpoint):
        """Skip this endpoint for failure_wait seconds; True if it was available."""
        now = self._clock()
        was_available = endpoint.failed_until <= now
        endpoint.failed_until = now + self.failure_wait
        self._recheck_at = float("-inf")
        if endpoint.url in self.leader_urls:
            self.leader_doubted.set()
        return was_available

    def ordered(self, binding=None, write=False):
        """Available endpoints in the order to try them for one request.

        With a binding (one per client connection) and least-connections
        balance, the connection's endpoint comes first, (re)bound to the least
        loaded available endpoint when it has none or its endpoint failed.
        A ``write`` (least-connections) goes to the leader first, and binds the
        connection there.
        """
        available = self.available()
        if self.balance != "least-connections" or not available:
            return available
        leader = self.leader() if write else None
        if leader is not None:
            if binding is not None and binding.endpoint is not leader:
                binding.bind(leader)
            return self._first(available, leader)
        if binding is None:
            return available
        current = binding.endpoint
        if current is None or current not in available:
            best = min(available, key=lambda ep: ep.bound)  # first of the ties
            binding.bind(best)
            current = best
        return self._first(available, current)

    @staticmethod
    def _first(available, endpoint):
        if available[0] is endpoint:
            return available
        return [endpoint] + [ep for ep in available if ep is not endpoint]


class Binding:
    """Which endpoint one client connection uses; released when it closes."""

    __slots__ = ("endpoint",)

    def __init__(self):
        self.endpoint = None

    def bind(self, endpoint):
        self.release()
        endpoint.bound += 1
        self.endpoint = endpoint

    def release(self):
        if self.endpoint is not None:
            self.endpoint.bound -= 1
            self.endpoint = None
