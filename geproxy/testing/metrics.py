"""A member's own counters, read from its /metrics.

The proxy's tests and benchmarks judge it by what the members saw (requests
received, watchers open), not by what the proxy says about itself. The text
is parsed with prometheus_client's parser, which knows the exposition format's
quoting and escaping.
"""

import time

from prometheus_client.parser import text_string_to_metric_families

from geproxy.testing.net import http

__all__ = ["parse_metrics", "read_metrics", "metric_value", "store_watchers",
           "settled_store_watchers"]

STORE_WATCHERS = "etcd_debugging_store_watchers"


def parse_metrics(text):
    """Every sample in a Prometheus text exposition: [Sample(name, labels, value, ...)]."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def read_metrics(client_url, timeout=5.0, context=None):
    """The samples of GET <client_url>/metrics; RuntimeError unless it answers 200."""
    status, body = http("GET", client_url + "/metrics", timeout=timeout, context=context)
    if status != 200:
        raise RuntimeError("%s/metrics returned %s" % (client_url, status))
    return parse_metrics(body.decode("utf-8", "replace"))


def metric_value(samples, name, default=0.0, **labels):
    """The sum of the samples called name whose labels include the given ones.

    default when there is none: etcd exports a labelled counter only after its
    first increment. With no labels given, a counter is summed over all of them
    (every method, say).
    """
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else default


def store_watchers(members):
    """v2 watchers open in the members right now, from their own /metrics."""
    return int(sum(m.metric(STORE_WATCHERS) for m in members))


def settled_store_watchers(members, timeout=5.0, interval=0.05):
    """store_watchers() once it stopped moving (watches that ended earlier are gone).

    The same figure three polls in a row, or whatever it is at the deadline.
    """
    deadline = time.monotonic() + timeout
    last, same = store_watchers(members), 0
    while same < 3 and time.monotonic() < deadline:
        time.sleep(interval)
        now = store_watchers(members)
        same = same + 1 if now == last else 0
        last = now
    return last
