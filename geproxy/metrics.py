"""geproxy.metrics: ``/metrics`` in Prometheus' text format, through prometheus_client.

The request path counts in plain Python numbers (``meter``); here those counts
move into prometheus_client's metric objects, once a second (one greenlet) and
at every scrape, and the gauges are read from the parts they describe.  The
same code runs in a single process and in every ``--workers`` worker:

* single process: the metrics live in this process's registry, with the
  ``process_*`` (and ``python_info``) collectors;
* ``--workers N``: prometheus_client's multiprocess mode.  The parent makes a
  fresh folder and names it in ``PROMETHEUS_MULTIPROC_DIR`` before it forks
  (``prepare_multiprocess_dir``; prometheus_client reads the variable when it
  is first imported, so the parent imports it only after that); each worker's values
  live in files there, and a scrape answered by any worker reads all of them:
  counters and histograms summed over every worker that ever ran, gauges
  summed (or the largest) over the live workers only.  When gunicorn reaps a
  worker the parent drops its live gauges (``mark_worker_dead``); the
  ``process_*`` figures are per worker there, with a ``pid`` label.

Series: the Go proxy's ``etcd_proxy_*`` with its names, help texts, labels and
buckets, and geproxy's own ``geproxy_*`` (README.md lists them).
"""

import logging
import os
import shutil
import sys
import tempfile
import time

import gevent

from geproxy.errors import error_answer
from geproxy.meter import (BUCKETS, M_BUCKETS, M_HANDLED, M_REQUESTS, M_SUM, P_BUCKETS,
                           P_FAILURES, P_REQUESTS, P_SUM)

log = logging.getLogger("geproxy.metrics")

METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what the Go proxy serves
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_EVERY = 1.0  # seconds between two moves of the counts into the metric objects
SHED_REASONS = ("max_connections", "out_of_files")
REFRESH_RESULTS = ("ok", "failed")  # membership.refreshes keys

_PROCESS_GAUGES = (  # ProcessCollector's samples, as gauges per worker (multiprocess mode)
    ("process_virtual_memory_bytes", "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", "Resident memory size in bytes."),
    ("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
    ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
    ("process_open_fds", "Number of open file descriptors."),
    ("process_max_fds", "Maximum number of open file descriptors."),
)


# --- the multiprocess folder, for the parent of --workers ------------------------------


def prepare_multiprocess_dir():
    """A new, empty folder for the workers' metric files, named in the environment.

    Call before any worker forks and before anything imports prometheus_client
    in this process (it chooses its storage at import time).
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before %s was set" % MULTIPROC_ENV)
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
    path = tempfile.mkdtemp(prefix="geproxy-metrics-", dir=base)
    os.environ[MULTIPROC_ENV] = path
    return path


def mark_worker_dead(pid, path):
    """A worker was reaped: its live gauges (connections, groups...) stop counting."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, path)


def remove_multiprocess_dir(path):
    shutil.rmtree(path, ignore_errors=True)


# --- prometheus_client's histogram, fed many observations at once ---------------------


def check_histogram_internals(child):
    """Raise RuntimeError unless a Histogram child has what ``add_histogram`` uses."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if not isinstance(buckets, list) or len(buckets) != len(BUCKETS) + 1 or \
            not all(hasattr(v, "inc") for v in buckets) or not hasattr(total, "inc"):
        raise RuntimeError("this prometheus_client's Histogram differs from the one "
                           "geproxy.metrics was written for")


def add_histogram(child, counts, total):
    """Add bucket counts (non-cumulative, +Inf last) and their sum to a Histogram child.

    prometheus_client offers only ``observe(one value)``; its Histogram keeps
    a value per bucket (not cumulative, +Inf last) and one for the sum, each
    with ``inc()``, in multiprocess mode too (checked here, and by the tests).
    """
    check_histogram_internals(child)
    for value, n in zip(child._buckets, counts):
        if n:
            value.inc(n)
    child._sum.inc(total)


def _no_metrics(environ, start_response):
    status, headers, body = error_answer("404 Not Found",
                                         "httpproxy: metrics are off (--metrics off)")
    start_response(status, headers)
    return [body]


class Exporter:
    """The metric objects, fed from a Meter and from the parts they describe.

    ``merged_dir`` (the multiprocess folder, under --workers) makes a scrape
    read every worker's values from there.  Gates (admission) are added with
    ``track`` once the listeners exist.  ``page`` is the WSGI answer for
    /metrics.
    """

    def __init__(self, meter, endpoints, transport=None, membership=None, coalescer=None,
                 merged_dir=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client import PlatformCollector, ProcessCollector
        from prometheus_client import disable_created_metrics
        disable_created_metrics()  # no *_created series: the Go proxy has none
        self.meter = meter
        self.endpoints = endpoints
        self.transport = transport
        self.membership = membership
        self.coalescer = coalescer
        self.merged_dir = merged_dir
        self.gates = []  # the listeners' Gates (admission), each once
        self.refusals = []  # the listeners' ``rejected`` (logs.Every)
        self._exported = {}  # key of a count -> the count as last exported
        self._members = set()  # member URLs with gauge series
        self._started = time.monotonic()
        self._greenlet = None
        registry = None
        if merged_dir is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry

        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, registry=registry)

        def gauge(name, doc, labels=(), mode="livesum"):
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        def histogram(name, doc, labels):
            return Histogram(name, doc, labels, registry=registry, buckets=BUCKETS)

        # the Go proxy's series (etcd proxy/httpproxy/metrics.go), help texts as there
        self.requests = counter("etcd_proxy_requests_total",
                                "Counter requests incoming by method.", ["method"])
        self.handled = counter("etcd_proxy_handled_total",
                               "Counter of requests fully handled (by authoratitave servers)",
                               ["code", "method"])
        self.dropped = counter("etcd_proxy_dropped_total",
                               "Counter of requests dropped on the proxy.",
                               ["method", "proxying_error"])
        self.durations = histogram(
            "etcd_proxy_handling_duration_seconds",
            "Bucketed histogram of handling time of successful events (non-watches), by "
            "method (GET/PUT etc.).", ["method"])
        # geproxy's own
        self.member_requests = counter(
            "geproxy_member_requests_total",
            "Requests sent to each member (every attempt, failovers included).", ["member"])
        self.member_failures = counter(
            "geproxy_member_failures_total",
            "Attempts at each member that failed (no connection, no answer in time, a "
            "broken answer).", ["member"])
        self.member_seconds = histogram(
            "geproxy_member_response_seconds",
            "Seconds from sending a request to each member until its answer head was in "
            "(with the body, when the body is read whole).", ["member"])
        self.member_bound = gauge(
            "geproxy_member_bound_connections",
            "Client connections bound to each member (--proxy-balance least-connections).",
            ["member"])
        self.member_upstream = gauge(
            "geproxy_member_upstream_connections",
            "Open connections to each member, idle or in use (native transport).", ["member"])
        self.client_connections = gauge("geproxy_client_connections",
                                        "Open client connections.")
        self.shed = counter("geproxy_shed_connections_total",
                            "New client connections shed, by reason (max_connections: over "
                            "--proxy-max-connections; out_of_files: no file descriptor).",
                            ["reason"])
        self.rejected = counter("geproxy_rejected_requests_total",
                                "Client requests refused before forwarding (a malformed or "
                                "cut-off head, a bad body, over a limit, a failed TLS "
                                "handshake).")
        self.watch_groups = gauge("geproxy_watch_groups",
                                  "Groups of identical one-shot watches sharing one upstream "
                                  "request.")
        self.watch_group_clients = gauge("geproxy_watch_group_clients",
                                         "Clients waiting in those groups.")
        self.refreshes = counter("geproxy_member_list_refreshes_total",
                                 "Member-list reads, by result (ok, failed).", ["result"])
        self.member_list_age = gauge(
            "geproxy_member_list_age_seconds",
            "Seconds since the last successful member-list read (since start while there "
            "was none); under --workers the oldest over the workers.", mode="livemax")
        self.process = None
        if merged_dir is not None:  # a worker: its process figures, labelled by pid
            self.process = ProcessCollector(registry=None)
            self.process_gauges = {name: gauge(name, doc, mode="liveall")
                                   for name, doc in _PROCESS_GAUGES}
        for reason in SHED_REASONS:
            self.shed.labels(reason)
        for result in REFRESH_RESULTS:
            self.refreshes.labels(result)

    def track(self, server):
        """Count a listener's server too: its Gate's connections and sheds (a Gate that
        listeners share counts once) and its refused requests."""
        if all(gate is not server.gate for gate in self.gates):
            self.gates.append(server.gate)
        self.refusals.append(server.rejected)

    # --- moving the counts ------------------------------------------------------------

    def _grown(self, key, now):
        """What a count (a number, or a list of them) grew by since the last flush."""
        last = self._exported.get(key)
        self._exported[key] = now
        if isinstance(now, list):
            return now if last is None else [a - b for a, b in zip(now, last)]
        return now - (last or 0)

    def flush(self):
        """Move what the meter counted since the last flush into the metric objects,
        and read the gauges."""
        meter = self.meter
        for method, record in list(meter.methods.items()):
            grown = self._grown(("method", method), record[:M_HANDLED])
            if grown[M_REQUESTS]:
                self.requests.labels(method).inc(grown[M_REQUESTS])
            if any(grown[M_BUCKETS:M_SUM]):
                add_histogram(self.durations.labels(method), grown[M_BUCKETS:M_SUM],
                              grown[M_SUM])
            for status, total in list(record[M_HANDLED].items()):
                n = self._grown(("handled", method, status), total)
                if n:
                    self.handled.labels(str(status), method).inc(n)
        for url, record in list(meter.members.items()):
            grown = self._grown(("member", url), list(record))
            if grown[P_REQUESTS]:
                self.member_requests.labels(url).inc(grown[P_REQUESTS])
            if grown[P_FAILURES]:
                self.member_failures.labels(url).inc(grown[P_FAILURES])
            if any(grown[P_BUCKETS:P_SUM]):
                add_histogram(self.member_seconds.labels(url), grown[P_BUCKETS:P_SUM],
                              grown[P_SUM])
        for (method, reason), total in list(meter.dropped.items()):
            n = self._grown(("dropped", method, reason), total)
            if n:
                self.dropped.labels(method, reason).inc(n)
        self._read_gauges()

    def _read_gauges(self):
        bound = {ep.url: ep.bound for ep in self.endpoints.all()}
        pools = getattr(self.transport, "pools", None) or {}
        upstream = {url: pool.open for url, pool in pools.items()}
        self._members.update(bound, upstream)
        for url in self._members:  # a member that left keeps its series, at 0
            self.member_bound.labels(url).set(bound.get(url, 0))
            self.member_upstream.labels(url).set(upstream.get(url, 0))
        self.client_connections.set(sum(gate.open for gate in self.gates))
        for gate in self.gates:
            for reason, total in zip(SHED_REASONS, (gate.shed_over_cap, gate.shed_no_files)):
                n = self._grown(("shed", id(gate), reason), total)
                if n:
                    self.shed.labels(reason).inc(n)
        for rejected in self.refusals:
            n = self._grown(("rejected", id(rejected)), rejected.total)
            if n:
                self.rejected.inc(n)
        if self.coalescer is not None:
            self.watch_groups.set(len(self.coalescer))
            self.watch_group_clients.set(self.coalescer.clients())
        if self.membership is not None:
            for result, total in self.membership.refreshes.items():
                n = self._grown(("refreshes", result), total)
                if n:
                    self.refreshes.labels(result).inc(n)
            last_ok = self.membership.last_ok or self._started
            self.member_list_age.set(time.monotonic() - last_ok)
        if self.process is not None:
            for family in self.process.collect():
                for sample in family.samples:
                    gauge = self.process_gauges.get(sample.name)
                    if gauge is not None:
                        gauge.set(sample.value)

    # --- serving ------------------------------------------------------------------------

    def page(self, environ, start_response):
        """The WSGI answer for /metrics (any method): everything, fresh."""
        self.flush()
        from prometheus_client import CollectorRegistry, generate_latest
        registry = self.registry
        if registry is None:
            from prometheus_client.multiprocess import MultiProcessCollector
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.merged_dir)
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _run(self):
        while True:
            gevent.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except Exception:  # never stop counting over one bad round
                log.exception("moving the counts into the metrics failed")

    def start(self):
        self._greenlet = gevent.spawn(self._run)

    def stop(self):
        """Stop the flushing greenlet, after a last flush (a worker's final counts)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
            self.flush()


def metrics_page(exporter):
    """The WSGI answer for /metrics: the exporter's, or 404 when metrics are off."""
    return _no_metrics if exporter is None else exporter.page
