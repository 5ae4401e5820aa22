"""Small helpers shared by the integration tests: waiting with deadlines, member counters."""

import time

import gevent
import requests

from geproxy.localcluster import settled_store_watchers, store_watchers


def poll(check, timeout=5.0, interval=0.05):
    """Call check() until it returns a truthy value or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        gevent.sleep(interval)


def watchers(cluster):
    """Current v2 watchers over all members, from their own /metrics."""
    return store_watchers(cluster.members)


def settled_watchers(cluster, timeout=5.0):
    """The members' watcher count once it stopped moving (earlier tests' watches gone)."""
    return settled_store_watchers(cluster.members, timeout)


def sessions(n):
    """n independent requests sessions (one keep-alive connection each), env ignored."""
    out = []
    for _ in range(n):
        s = requests.Session()
        s.trust_env = False
        out.append(s)
    return out
