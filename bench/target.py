"""The etcd members under test: a local cluster the bench starts, or members given by URL."""

import time
import urllib.parse

from harness import log
from geproxy.testing import LocalCluster, Member, loopback_url, v2_put


class Target:
    """The members (``members``) and their ``initial_cluster`` for the proxies."""

    def __init__(self, members_opt=None, initial_cluster=None, size=3, tls=None):
        self.cluster = None
        if members_opt:
            if not initial_cluster:
                raise SystemExit("--members needs --initial-cluster (for the proxies)")
            urls = [loopback_url(u.strip().rstrip("/")) for u in members_opt.split(",")
                    if u.strip()]
            self.members = [Member("m%d" % i, u, None, None, None) for i, u in enumerate(urls)]
            self.initial_cluster = initial_cluster
        else:
            self.cluster = LocalCluster(size=size, tls=tls)
            self.members = self.cluster.members
            self.initial_cluster = None

    def start(self):
        if self.cluster is not None:
            t0 = time.monotonic()
            self.cluster.start(timeout=60.0)
            self.initial_cluster = self.cluster.initial_cluster
            log("etcd cluster of %d members ready in %.1fs"
                % (len(self.members), time.monotonic() - t0))
        return self

    def close(self):
        if self.cluster is not None:
            self.cluster.close()

    def ports(self):
        return [urllib.parse.urlsplit(m.client_url).port for m in self.members]

    def put(self, key, value):
        first = self.members[0]
        status, body = v2_put(first.client_url, key, value, timeout=5.0, context=first.context)
        if status not in (200, 201):
            raise RuntimeError("PUT %s: %s %r" % (key, status, body[:200]))

    def received(self):
        """Per member: requests it received (etcd_http_received_total, every method)."""
        return [m.metric("etcd_http_received_total") for m in self.members]
