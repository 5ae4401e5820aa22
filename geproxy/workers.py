"""geproxy.workers: ``--workers N``, gunicorn's arbiter with N pywsgi worker processes.

One process uses one core; N processes share the listening sockets, which the
arbiter (the parent) binds before forking, and the kernel spreads new
connections over them.  gunicorn is embedded as a library (``BaseApplication``)
rather than a hand-written pre-fork because it already does the parts that
are easy to get wrong: reaping and respawning workers, a heartbeat that
replaces a hung worker, TERM = graceful / INT = quick shutdown, HUP to
restart workers, TTIN/TTOU to change their number.  It measured the same as a
hand-written pre-fork (32.6k vs 32.7k req/s with 2 workers, hello-world app),
so it costs nothing.  Its config files and GUNICORN_CMD_ARGS are not read: the
settings come from our flags and environment only.

This module is imported only by ``cli.main``, after ``monkey.patch_all()``:
gunicorn imports ssl, and patching after that import warns and can misbehave
(gevent#1016, gunicorn#2796).  The worker's own ``patch_all()`` after the
fork then finds everything patched and is silent.

Each worker builds its own app after the fork (``wiring.build``: member list,
refresh greenlet, upstream pools; no greenlet or socket crosses a fork) and
serves with the same server and handler classes as a single process.  The TLS
contexts are made once by the arbiter (so bad TLS flags exit 2 before any
fork, and an ``--auto-tls`` certificate is made once); each worker watches
the certificate files for itself.  gunicorn's own TLS options stay unused:
https listeners get our context (``server_class``).
Differences: each worker has its own member list and failure marks, and
``--proxy-max-connections`` counts per worker.
"""

import logging
import math
import os
import random
import signal
import socket
import time

import gevent
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.workers.ggevent import GeventPyWSGIWorker

from geproxy import metrics, shutdown, wiring
from geproxy import settings as settings_mod
from geproxy.admission import Board, Gate
from geproxy.listeners import listen_address
from geproxy.logs import fatal
from geproxy.resources import raise_open_files_limit, schedule_gc
from geproxy.server import PyWSGIServer, StartNowPool
from geproxy.values import host_port

log = logging.getLogger("geproxy.workers")

GRACEFUL_MARGIN = 2  # seconds the arbiter waits beyond --proxy-shutdown-timeout for workers
WORKER_CONNECTIONS = 1 << 20  # gunicorn's pool per listener; the Gate caps below it
START_JITTER = 1.0  # seconds: workers read the member list at different times
READY_WAIT = 2.0  # seconds a new worker waits for its first member list before serving


class ProxyWorker(GeventPyWSGIWorker):
    """gunicorn's gevent pywsgi worker, serving through our server and handler classes
    (``parts.handler_class``; gunicorn's ``handler_class`` argument is not used)."""

    def server_class(self, listener, application, spawn, handler_class, environ, log=None,
                     **ssl_args):
        """Called by gunicorn's run() once per listener; its ``log`` (access log) is dropped,
        and its pool (``spawn``) is replaced by a StartNowPool of the same size."""
        settings = self.app.settings
        parts = self.app.parts
        server = PyWSGIServer(
            listener, application, spawn=StartNowPool(WORKER_CONNECTIONS),
            handler_class=parts.handler_class,
            environ=environ, gate=self.gate,
            idle_timeout=wiring.seconds(settings.proxy_client_idle_timeout),
            header_timeout=wiring.seconds(settings.proxy_client_header_timeout),
            ssl_context=self.app.ssl_context(listener), **ssl_args)
        if parts.exporter is not None:
            parts.exporter.track(server)
        self.servers.append(server)
        return server

    def init_process(self):
        """After the fork: one Gate for all of this worker's listeners, as in one process."""
        self.servers = []
        self.gate = Gate(self.app.settings.proxy_max_connections)
        schedule_gc()
        super().init_process()

    def handle_exit(self, sig, frame):
        """SIGTERM from the arbiter: the graceful stop (shutdown.py), as in one process.

        gunicorn's run() then sees the connections gone (it looks once a
        second) and returns; its own wait is longer than ours.
        """
        stopping, self.alive = not self.alive, False
        if stopping or self.app.parts is None:  # SIGTERM twice (from the platform and
            return  # from the arbiter), or still loading: run() returns once loaded
        gevent.spawn(shutdown.graceful, self.servers, self.app.parts.app.watches,
                     wiring.seconds(self.app.settings.proxy_shutdown_timeout))

    def run(self):
        # on the board once loaded: a sibling holds a burst back only for a worker that
        # accepts (loading waits up to READY_WAIT for the member list)
        self.gate.join(self.app.board.seat())
        try:
            super().run()
        finally:
            self.app.parts.stop()  # the last counts go to the metrics files
            self.gate.close()


class GunicornLog(glogging.Logger):
    """gunicorn's messages through our logging setup (same format, stdout); no access log."""

    def setup(self, cfg):
        self.cfg = cfg
        self.error_log.propagate = True
        self.error_log.setLevel(logging.NOTSET)  # the root logger's level decides
        self.access_log.disabled = True


def _bind(url):
    host, port = listen_address(url)
    if port is None:
        return "unix:" + host
    return host_port(host, port)


def _addresses(url):
    """The (address, port) pairs a listener bound for ``url`` may report as its name."""
    host, port = listen_address(url)
    try:
        return {(info[4][0], port) for info in socket.getaddrinfo(host, port, 0,
                                                                  socket.SOCK_STREAM)}
    except OSError:
        return {(host, port)}


def _fatal(exc):
    """A fatal error in a worker (bad cluster file, failed discovery): stop everything.

    Runs in the membership greenlet; gevent hands SystemExit to the worker's
    main greenlet, and this exit status makes the arbiter halt instead of
    respawning the worker.
    """
    fatal(str(exc), Arbiter.WORKER_BOOT_ERROR)


class ProxyArbiter(Arbiter):
    """gunicorn's arbiter; a second SIGTERM during the graceful stop stops at once.

    gunicorn's own stop() only hurries for SIGINT or SIGQUIT, so a SIGTERM that
    arrives while it stops is queued as SIGINT.
    """

    stopping = False

    def signal(self, sig, frame):
        if sig == signal.SIGTERM and self.stopping:
            sig = signal.SIGINT
        super().signal(sig, frame)

    def stop(self, graceful=True):
        self.stopping = True
        super().stop(graceful)


def load_worker_app(settings, tls_set, metrics_dir=None):
    """The WSGI app of one worker, built after the fork.

    The member-list reads start after a random delay so that N workers do not
    refresh in lockstep; the worker then waits (bounded) for its first member
    list before it accepts connections, so that no client meets a worker that
    still answers 503 while its siblings serve.  Until then the kernel queues
    new connections for the other workers.
    """
    parts = wiring.build(settings, tls_set, on_fatal=_fatal, metrics_dir=metrics_dir)
    gevent.sleep(random.uniform(0, START_JITTER))
    parts.start()
    deadline = time.monotonic() + READY_WAIT
    while parts.membership.last_refresh is None and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return parts


class ProxyApplication(BaseApplication):
    """gunicorn configured from our settings only (no config file, no GUNICORN_CMD_ARGS)."""

    def __init__(self, settings, tls_set, metrics_dir=None):
        self.settings = settings
        self.tls = tls_set
        self.metrics_dir = metrics_dir
        self.board = Board()  # the workers' connection counts (admission), shared by fork
        self.parts = None  # in a worker, once loaded
        self._contexts = {address: context for url, context in
                          tls_set.listener_contexts(settings.listen_client_urls).items()
                          for address in _addresses(url)}
        super().__init__(prog=settings_mod.PROG)

    def ssl_context(self, listener):
        """The TLS context of the https listen URL bound by ``listener``, or None."""
        return self._contexts.get(tuple(listener.getsockname()[:2]))

    def load_config(self):
        options = {
            "bind": [_bind(url) for url in self.settings.listen_client_urls],
            "workers": self.settings.workers,
            "worker_class": ProxyWorker,
            "worker_connections": WORKER_CONNECTIONS,
            "graceful_timeout": math.ceil(wiring.seconds(self.settings.proxy_shutdown_timeout))
            + GRACEFUL_MARGIN,
            "child_exit": self.child_exit,
            "accesslog": None,
            "logger_class": GunicornLog,
            "proc_name": settings_mod.PROG,
            "control_socket_disable": True,  # else a shared gunicorn.ctl in $HOME
        }
        for name, value in options.items():
            self.cfg.set(name, value)

    def child_exit(self, arbiter, worker):
        """gunicorn's hook in the arbiter when it reaped a worker: its live gauges go."""
        if self.metrics_dir is not None:
            metrics.mark_worker_dead(worker.pid, self.metrics_dir)

    def load(self):
        self.parts = load_worker_app(self.settings, self.tls, self.metrics_dir)
        return self.parts.app

    def run(self):
        """BaseApplication.run with our arbiter."""
        try:
            ProxyArbiter(self).run()
        except RuntimeError as exc:
            fatal("gunicorn: %s" % exc)


def serve_workers(settings, tls_set):
    """Run the arbiter until SIGTERM (graceful) or SIGINT (quick); 0, or 1 on a fatal error."""
    log.info("starting proxy in '%s' mode with %d worker processes (this proxy supports "
             "the v2 API only)", settings.proxy, settings.workers)
    raise_open_files_limit()  # inherited by the workers
    metrics_dir = metrics.prepare_multiprocess_dir() if settings.metrics != "off" else None
    arbiter_pid = os.getpid()
    try:
        ProxyApplication(settings, tls_set, metrics_dir).run()
    except SystemExit as exc:
        if os.getpid() != arbiter_pid:  # a worker leaving gunicorn's fork: let it exit
            raise
        if exc.code:
            return 1
    except HaltServer:  # gunicorn raises it again if a second worker fails while halting
        return 1
    finally:
        if metrics_dir is not None and os.getpid() == arbiter_pid:
            metrics.remove_multiprocess_dir(metrics_dir)
    log.info("stopped")
    return 0
