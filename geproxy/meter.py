"""geproxy.meter: the counting done on the request path, in plain Python numbers.

Every forwarded request passes through here, so counting must cost next to
nothing: a few dict updates and clock reads per request, no locks and no
label lookups (prometheus_client's labelled ``inc()``/``observe()`` take a
lock each and cost microseconds).  ``metrics`` moves what grew into
prometheus_client's metric objects once a second and at each scrape.

What is counted follows the Go proxy (``etcd_proxy_*``), per method:

* requests: each request that reaches forwarding (not OPTIONS, not a readonly
  501, not the proxy's own endpoints);
* handled, by status, and the seconds since the request came in (buckets of
  0.5 ms x 2^k, k = 0..12, then +Inf): when the client's answer from a member
  is decided (its head arrived);
* dropped: ``zero_endpoints`` when no endpoint was available,
  ``failed_sending_request`` once per failed attempt at a member and
  ``failed_getting_response`` once when no member gave an answer;

and, per member URL, the requests sent to it (each attempt), the attempts that
failed and the seconds until its answer was in.

A coalesced watch is one upstream request for many clients: its attempts count
once, and each client's outcome (handled, or dropped) counts for that client.
"""

from bisect import bisect_left
from time import monotonic

MEMBER = "geproxy.member"  # environ key: the member URL whose answer the client got

ZERO_ENDPOINTS = "zero_endpoints"
FAILED_SENDING = "failed_sending_request"
FAILED_GETTING = "failed_getting_response"
DROP_REASONS = frozenset((ZERO_ENDPOINTS, FAILED_SENDING, FAILED_GETTING))

# Go's prometheus.ExponentialBuckets(0.0005, 2, 13): 0.0005 ... 2.048 (and +Inf)
BUCKETS = tuple(0.0005 * 2 ** k for k in range(13))


# A method's record: [requests, a count per bucket (the last one +Inf), sum of
# seconds, {status: handled}]; a member's: [requests, failures, buckets..., sum].
# Both are cumulative: ``metrics`` exports what grew since it last looked.
M_REQUESTS, M_BUCKETS, M_SUM, M_HANDLED = 0, 1, 1 + len(BUCKETS) + 1, 2 + len(BUCKETS) + 1
P_REQUESTS, P_FAILURES, P_BUCKETS, P_SUM = 0, 1, 2, 2 + len(BUCKETS) + 1


def _method_record():
    return [0] * M_SUM + [0.0, {}]


def _member_record():
    return [0] * P_SUM + [0.0]


class Meter:
    """The proxy's counters, cumulative; the app calls it at the points below.

    ``methods`` and ``members`` map a method or member URL to its record (see
    above), ``dropped`` (method, reason) to a count.  Written for speed: one
    dict lookup per record and step, histograms inline.
    """

    __slots__ = ("methods", "members", "dropped")

    def __init__(self):
        self.methods = {}
        self.members = {}
        self.dropped = {}

    def _method(self, method):
        record = self.methods.get(method)
        if record is None:
            record = self.methods[method] = _method_record()
        return record

    def request(self, method):
        """A request reached forwarding; returns its start time, for ``settled``."""
        self._method(method)[M_REQUESTS] += 1
        return monotonic()

    def _member(self, url):
        record = self.members.get(url)
        if record is None:
            record = self.members[url] = _member_record()
        return record

    def answered(self, url, seconds):
        """An attempt at member ``url`` got its answer, its head ``seconds`` after the
        request was written (None: not measured)."""
        record = self._member(url)
        record[P_REQUESTS] += 1
        if seconds is not None:
            record[P_BUCKETS + bisect_left(BUCKETS, seconds)] += 1  # first bound >= it: le
            record[P_SUM] += seconds

    def failed(self, method, url):
        """An attempt at member ``url`` failed: the member's request and failure, and
        ``failed_sending_request``."""
        record = self._member(url)
        record[P_REQUESTS] += 1
        record[P_FAILURES] += 1
        self.drop(method, FAILED_SENDING)

    def settled(self, environ, method, status, source, started):
        """The client's answer is decided.

        ``source`` is the URL of the member whose answer it gets (counted as
        handled, with ``status`` an int, and noted in the environ for the
        access log), or the reason the proxy answers itself (a drop reason).
        """
        if source in DROP_REASONS:
            self.drop(method, source)
            return
        elapsed = monotonic() - started
        record = self._method(method)
        record[M_BUCKETS + bisect_left(BUCKETS, elapsed)] += 1
        record[M_SUM] += elapsed
        handled = record[M_HANDLED]
        try:
            handled[status] += 1
        except KeyError:
            handled[status] = 1
        environ[MEMBER] = source

    def drop(self, method, reason):
        key = (method, reason)
        self.dropped[key] = self.dropped.get(key, 0) + 1
