"""geproxy.cli: the ``gevent-etcdproxy`` entry point.

Monkey-patching happens here, before anything else is imported, so that
sockets, ssl and requests are all cooperative (gevent#1016).  Then the data
flows one way: flags and env -> settings -> membership -> endpoints -> the
WSGI app -> the listeners.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from geproxy import settings as settings_mod  # noqa: E402
from geproxy.app import ProxyApp  # noqa: E402
from geproxy.bootstrap import Bootstrap, BootstrapError, check_conflicts  # noqa: E402
from geproxy.datadir import ClusterFile, DataDirError  # noqa: E402
from geproxy.endpoints import EndpointSet  # noqa: E402
from geproxy.membership import Membership, SelfAddresses  # noqa: E402
from geproxy.server import ProxyServer, listen_address, raise_open_files_limit  # noqa: E402
from geproxy.upstream import make_transport  # noqa: E402

log = logging.getLogger("geproxy")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}


def setup_logging(level):
    """One line per event on stdout (12-factor); never buffered."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])


def ms(value):
    return value / 1000.0


def fail(message):
    """One line for the operator on stderr (and in the log), exit status 1."""
    log.error("%s", message)
    sys.stderr.write("%s: %s\n" % (settings_mod.PROG, message))
    sys.exit(1)


def build_app(settings, on_fatal=None):
    """The WSGI app and its background parts, wired in data-flow order.

    Returns (app, membership, transport); nothing runs until
    ``membership.start()``, so a pre-fork server can call this in each worker.
    """
    cluster_file = ClusterFile(settings.data_dir_path)
    endpoints = EndpointSet(failure_wait=ms(settings.proxy_failure_wait),
                            balance=settings.proxy_balance)
    bootstrap = Bootstrap(settings, cluster_file)
    membership = Membership(
        bootstrap, endpoints,
        refresh_interval=ms(settings.proxy_refresh_interval),
        dial_timeout=ms(settings.proxy_dial_timeout),
        cluster_file=cluster_file,
        self_addresses=SelfAddresses(listen_address(u) for u in settings.listen_client_urls),
        on_fatal=on_fatal)
    transport = make_transport(settings.proxy_transport,
                               dial_timeout=ms(settings.proxy_dial_timeout),
                               write_timeout=ms(settings.proxy_write_timeout),
                               read_timeout=ms(settings.proxy_read_timeout))

    def status():
        """Membership's fields; while discovery waits, its progress is the state."""
        doc = membership.status()
        if bootstrap.waiting:
            doc["waiting"] = bootstrap.waiting
        return doc

    app = ProxyApp(endpoints, transport, readonly=settings.readonly,
                   max_body=settings.proxy_max_request_bytes,
                   header_timeout=ms(settings.proxy_header_timeout),
                   status=status,
                   waiting=lambda: bootstrap.waiting,
                   coalesce_watches=settings.proxy_coalesce_watches)
    return app, membership, transport


def preflight(settings):
    """Checks that end the process before it listens: exit 1 with one line."""
    try:
        check_conflicts(settings)
        cluster_file = ClusterFile(settings.data_dir_path)
        cluster_file.check()
        cluster_file.read()  # a garbage file stops us here, before listening
    except (BootstrapError, DataDirError) as exc:
        fail(str(exc))


def main(argv=None):
    try:
        settings, notes = settings_mod.parse(argv)
    except settings_mod.UsageError as exc:
        sys.stderr.write("%s: %s\n" % (settings_mod.PROG, exc))
        sys.exit(2)
    setup_logging(settings.log_level)
    for level, message in notes:
        getattr(log, level)("%s", message)
    preflight(settings)
    if settings.workers > 1:
        from geproxy.workers import serve_workers
        return serve_workers(settings)
    return serve(settings)


def serve(settings):
    """One process: listeners, the refresh greenlet, until SIGTERM or SIGINT."""
    log.info("starting proxy in '%s' mode (this proxy supports the v2 API only)", settings.proxy)
    stopping = Event()
    fatal = []

    def on_fatal(exc):
        fatal.append(exc)
        stopping.set()

    soft, hard = raise_open_files_limit()
    if soft is not None:
        log.info("open files limit %d (hard %d); client connection cap %s", soft, hard,
                 settings.proxy_max_connections or "none")
    app, membership, transport = build_app(settings, on_fatal=on_fatal)
    try:
        server = ProxyServer(app, settings.listen_client_urls,
                             max_connections=settings.proxy_max_connections,
                             idle_timeout=ms(settings.proxy_client_idle_timeout))
    except OSError as exc:
        fail("cannot listen on %s: %s" % (",".join(settings.listen_client_urls), exc))

    def on_signal(signum):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    server.start()
    membership.start()
    stopping.wait()
    server.close()
    membership.stop()
    server.stop(timeout=1.0)
    transport.close()
    if fatal:
        fail(str(fatal[0]))
    log.info("stopped")
    return 0
