"""geproxy.bootstrap: where the first peer URLs come from.

Precedence, as etcd: the data dir's cluster file (a restarted proxy), then
``--discovery``, then ``--discovery-srv``, then ``--initial-cluster``.  More
than one of the last three set explicitly is an error, with etcd's message.
Discovery may wait a long time for the cluster to fill; meanwhile ``waiting``
says how far it got, for the 503 answers and the config endpoint.
"""

import logging

from geproxy.errors import BootstrapError

log = logging.getLogger("geproxy.bootstrap")

CONFLICT = ('multiple discovery or bootstrap flags are set. '
            'Choose one of "initial-cluster", "discovery" or "discovery-srv"')


def check_conflicts(settings):
    chosen = [name for name, given in (
        ("initial-cluster", settings.sources.get("initial_cluster") != "default"),
        ("discovery", bool(settings.discovery)),
        ("discovery-srv", bool(settings.discovery_srv)),
    ) if given]
    if len(chosen) > 1:
        raise BootstrapError(CONFLICT)


class Bootstrap:
    """A callable giving the first peer URLs; may block while discovery waits."""

    def __init__(self, settings, cluster_file):
        self.settings = settings
        self.cluster_file = cluster_file
        self.waiting = None  # e.g. "waiting for discovery: found 1 of 3 members"

    def progress(self, message):
        self.waiting = message
        log.info("%s", message)

    def __call__(self):
        s = self.settings
        stored = self.cluster_file.read()  # DataDirError on a garbage file: fatal
        if stored is not None:
            if s.discovery or s.discovery_srv:
                log.warning("discovery ignored: the proxy was initialized before; "
                            "using the cluster file %s", self.cluster_file.path)
            log.info("using peer URLs %s from cluster file %s", stored, self.cluster_file.path)
            return stored
        if s.discovery:
            from geproxy import discovery
            urls = discovery.discover(s.discovery, proxy=s.discovery_proxy,
                                      progress=self.progress)
        elif s.discovery_srv:
            from geproxy import discovery
            urls = discovery.srv_peer_urls(s.discovery_srv, s.discovery_srv_name,
                                           s.discovery_srv_resolver)
        else:
            return list(s.peer_urls)
        self.waiting = None
        self.cluster_file.write(urls)
        return urls
