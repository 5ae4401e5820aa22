"""geproxy.cli: the ``gevent-etcdproxy`` entry point.

Monkey-patching happens here, before anything else is imported, so that
sockets, ssl and requests are all cooperative (gevent#1016).  Then: flags and
env -> settings -> checks that may end the process -> the TLS contexts -> the
parts of the proxy (wiring) -> the listeners, until SIGTERM or SIGINT.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from geproxy import logs, shutdown, tls, wiring  # noqa: E402
from geproxy import settings as settings_mod  # noqa: E402
from geproxy.bootstrap import check_conflicts  # noqa: E402
from geproxy.datadir import ClusterFile  # noqa: E402
from geproxy.errors import FatalError, UsageError  # noqa: E402
from geproxy.logs import fatal  # noqa: E402
from geproxy.resources import raise_open_files_limit, schedule_gc  # noqa: E402
from geproxy.server import ProxyServer  # noqa: E402

log = logging.getLogger("geproxy")


def preflight(settings):
    """Checks that end the process before it listens: exit 1 with one line."""
    try:
        check_conflicts(settings)
        cluster_file = ClusterFile(settings.data_dir_path)
        cluster_file.check()
        cluster_file.read()  # a garbage file stops us here, before listening
    except FatalError as exc:
        fatal(str(exc))


def usage_error(exc):
    """Bad command line or environment: one line on stderr, exit status 2."""
    sys.stderr.write("%s: %s\n" % (settings_mod.PROG, exc))
    sys.exit(2)


def load_tls(settings):
    """The TLS contexts (tls.load): exit 2 for a bad TLS flag, 1 for an unwritable folder."""
    try:
        return tls.load(settings)
    except UsageError as exc:
        usage_error(exc)
    except FatalError as exc:
        fatal(str(exc))


def main(argv=None):
    try:
        settings, notes = settings_mod.parse(argv)
    except UsageError as exc:
        usage_error(exc)
    logs.setup(settings.log_level, settings.log_format, pid=settings.workers > 1)
    for level, message in notes:
        getattr(log, level)("%s", message)
    preflight(settings)
    tls_set = load_tls(settings)
    if settings.workers > 1:
        from geproxy.workers import serve_workers
        return serve_workers(settings, tls_set)
    return serve(settings, tls_set)


def serve(settings, tls_set):
    """One process: listeners, the refresh greenlet, until SIGTERM or SIGINT (shutdown.py)."""
    log.info("starting proxy in '%s' mode (this proxy supports the v2 API only)", settings.proxy)
    stopping = Event()
    hurry = Event()  # stop at once: SIGINT, a second SIGTERM, a fatal error
    fatal_errors = []

    def on_fatal(exc):
        fatal_errors.append(exc)
        hurry.set()
        stopping.set()

    soft, hard = raise_open_files_limit()
    if soft is not None:
        log.info("open files limit %d (hard %d); client connection cap %s", soft, hard,
                 settings.proxy_max_connections or "none")
    parts = wiring.build(settings, tls_set, on_fatal=on_fatal)
    try:
        server = ProxyServer(parts.app, settings.listen_client_urls,
                             max_connections=settings.proxy_max_connections,
                             idle_timeout=wiring.seconds(settings.proxy_client_idle_timeout),
                             header_timeout=wiring.seconds(
                                 settings.proxy_client_header_timeout),
                             tls_contexts=tls_set.listener_contexts(
                                 settings.listen_client_urls),
                             handler_class=parts.handler_class)
    except OSError as exc:
        fatal("cannot listen on %s: %s" % (",".join(settings.listen_client_urls), exc))
    if parts.exporter is not None:
        for listener_server in server.servers:
            parts.exporter.track(listener_server)

    def on_signal(signum):
        name = signal.Signals(signum).name
        if stopping.is_set() or signum == signal.SIGINT:
            log.info("received %s, stopping at once", name)
            hurry.set()
        else:
            log.info("received %s, shutting down: requests in flight get %d ms", name,
                     settings.proxy_shutdown_timeout)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    server.start()
    parts.start()
    schedule_gc()
    stopping.wait()
    cut = shutdown.graceful(server.servers, parts.app.watches,
                            wiring.seconds(settings.proxy_shutdown_timeout), hurry)
    if cut:
        log.warning("cut %d client connection(s) still open", cut)
    server.release()  # graceful() stopped the listeners
    parts.stop()
    parts.close()
    if fatal_errors:
        fatal(str(fatal_errors[0]))
    log.info("stopped")
    return 0
