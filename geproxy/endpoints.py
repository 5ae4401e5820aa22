"""geproxy.endpoints: which member client URLs may take a request, in what order.

Membership hands this module a fresh list of client URLs on every refresh;
forwarding asks it for the available endpoints and reports transport failures.
A failed endpoint is skipped for ``failure_wait`` seconds and then tried again
(etcd's ``--proxy-failure-wait``).  Unlike the Go proxy, a refresh keeps those
failure marks: a member that just failed does not come back early because the
member list was re-read.
"""

import random
import time


class Endpoint:
    """One member client URL and, if it failed recently, when it may be retried."""

    __slots__ = ("url", "failed_until")

    def __init__(self, url):
        self.url = url
        self.failed_until = 0.0

    def __repr__(self):
        return "Endpoint(%r)" % self.url


class EndpointSet:
    """The current endpoints in shuffled order, with failure marks."""

    def __init__(self, failure_wait, clock=time.monotonic, rng=None):
        self.failure_wait = failure_wait
        self._clock = clock
        self._rng = rng or random.Random()
        self._endpoints = []

    def replace(self, urls):
        """Take a new URL list (from a refresh), shuffle it, keep failure marks."""
        old = {ep.url: ep for ep in self._endpoints}
        fresh = []
        for url in dict.fromkeys(urls):  # de-duplicate, keep first occurrence
            fresh.append(old.get(url) or Endpoint(url))
        self._rng.shuffle(fresh)
        self._endpoints = fresh

    def all(self):
        return list(self._endpoints)

    def available(self):
        """Endpoints not marked failed, in the current shuffled order."""
        now = self._clock()
        return [ep for ep in self._endpoints if ep.failed_until <= now]

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
        return was_available
