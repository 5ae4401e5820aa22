"""geproxy.wiring: the parts of one serving process, put together in data-flow order.

flags and env (settings) -> where the first peers come from (bootstrap,
datadir) -> the member list and its refresh (membership) -> endpoint choice
(endpoints) -> forwarding (app, upstream) -> the wire (server, handler).
The TLS contexts (tls) are made before, once per process tree (``tls.load``,
whose errors exit 2), and given to the member-list reads, the member client
and the listeners.  Both the single process (cli) and each worker process
(workers) call ``build``; nothing runs until ``Parts.start()``, which also
starts watching the certificate files.  Around forwarding: the counting for
the metrics (meter, metrics), CORS (cors) and the access log's handler class
(accesslog), each only when its flag asks for it; and the loop's polling
after events (busypoll).
"""

from geproxy.accesslog import handler_class
from geproxy.app import ProxyApp
from geproxy.bootstrap import Bootstrap
from geproxy.busypoll import BusyPoll
from geproxy.cors import Cors
from geproxy.datadir import ClusterFile
from geproxy.endpoints import EndpointSet
from geproxy.lag import LoopLag
from geproxy.listeners import listen_address, unix_path
from geproxy.membership import Membership, SelfAddresses
from geproxy.meter import Meter
from geproxy.metrics import Exporter
from geproxy.upstream import make_transport


def seconds(ms):
    """A millisecond flag value in seconds (0 stays 0: "no limit")."""
    return ms / 1000.0


class Parts:
    """One process's app and the pieces behind it that run or need closing.

    ``exporter`` (metrics.Exporter, None with --metrics off) wants the
    listeners' Gates (``exporter.track``); ``handler_class`` is the
    connection handler to serve with; ``busy_poll`` (busypoll.BusyPoll, a
    no-op with --proxy-busy-poll 0) keeps the loop polling after events.
    """

    def __init__(self, app, membership, transport, lag, busy_poll, tls, exporter=None,
                 handler_class=None):
        self.app = app
        self.membership = membership
        self.transport = transport
        self.lag = lag
        self.tls = tls
        self.exporter = exporter
        self.handler_class = handler_class
        self.busy_poll = busy_poll

    def start(self):
        self.lag.start()
        self.busy_poll.start()
        self.tls.start()
        if self.exporter is not None:
            self.exporter.start()
        return self.membership.start()

    def stop(self):
        self.membership.stop()
        self.tls.stop()
        self.lag.stop()
        self.busy_poll.stop()
        if self.exporter is not None:
            self.exporter.stop()

    def close(self):
        self.transport.close()


def pipelines_per_worker(pipelines, workers):
    """One worker's share of --proxy-pipeline (at least one unless it is 0).

    Why: each worker has its own pipes, so N workers with the whole number each
    give every member N times the connections, each carrying 1/N of the batch.
    Measured (bench/README "Two workers"): two workers with one pipe each did
    1.16x the req/s of two workers with two each, the members spending 88
    instead of 103 µs per request.
    """
    if not pipelines:
        return 0
    return max(1, pipelines // workers)


def build(settings, tls, on_fatal=None, metrics_dir=None):
    """The WSGI app and its background parts for ``settings``, with ``tls`` (tls.TLS).

    ``metrics_dir``: the workers' shared metrics folder (metrics.py), under --workers.
    """
    cluster_file = ClusterFile(settings.data_dir_path)
    endpoints = EndpointSet(failure_wait=seconds(settings.proxy_failure_wait),
                            balance=settings.proxy_balance)
    bootstrap = Bootstrap(settings, cluster_file)
    membership = Membership(
        bootstrap, endpoints,
        refresh_interval=seconds(settings.proxy_refresh_interval),
        dial_timeout=seconds(settings.proxy_dial_timeout),
        cluster_file=cluster_file,
        self_addresses=SelfAddresses(listen_address(u) for u in settings.listen_client_urls
                                     if unix_path(u) is None),
        on_fatal=on_fatal, tls_context=tls.peer, client_tls_context=tls.forward)
    lag = LoopLag()
    transport = make_transport(settings.proxy_transport,
                               dial_timeout=seconds(settings.proxy_dial_timeout),
                               write_timeout=seconds(settings.proxy_write_timeout),
                               read_timeout=seconds(settings.proxy_read_timeout),
                               tls_context=tls.forward, lag=lag,
                               pipelines=pipelines_per_worker(settings.proxy_pipeline,
                                                              settings.workers))

    def status():
        """Membership's fields; while discovery waits, its progress is the state."""
        doc = membership.status()
        if bootstrap.waiting:
            doc["waiting"] = bootstrap.waiting
        return doc

    metrics_on = settings.metrics != "off"
    meter = Meter() if metrics_on or settings.access_log else None  # the log names the member
    exporter = Exporter(meter, endpoints, transport, membership,
                        merged_dir=metrics_dir) if metrics_on else None
    app = ProxyApp(endpoints, transport, readonly=settings.readonly,
                   max_body=settings.proxy_max_request_bytes,
                   header_timeout=seconds(settings.proxy_header_timeout),
                   status=status,
                   waiting=lambda: bootstrap.waiting,
                   coalesce_watches=settings.proxy_coalesce_watches,
                   meter=meter, metrics=exporter, cors=Cors(settings.cors))
    if exporter is not None:
        exporter.coalescer = app.coalescer  # made by the app
    return Parts(app, membership, transport, lag, BusyPoll(settings.proxy_busy_poll / 1e6),
                 tls, exporter, handler_class(settings.access_log))
