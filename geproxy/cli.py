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
from geproxy.endpoints import EndpointSet  # noqa: E402
from geproxy.membership import Membership  # noqa: E402
from geproxy.server import ProxyServer  # noqa: E402
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


def build(settings):
    """Wire the parts together; returns (membership, server, transport)."""
    endpoints = EndpointSet(failure_wait=ms(settings.proxy_failure_wait))
    membership = Membership(settings.peer_urls, endpoints,
                            refresh_interval=ms(settings.proxy_refresh_interval),
                            dial_timeout=ms(settings.proxy_dial_timeout))
    transport = make_transport(settings.proxy_transport,
                               dial_timeout=ms(settings.proxy_dial_timeout),
                               write_timeout=ms(settings.proxy_write_timeout),
                               read_timeout=ms(settings.proxy_read_timeout))
    app = ProxyApp(endpoints, transport, readonly=settings.readonly,
                   max_body=settings.proxy_max_request_bytes)
    server = ProxyServer(app, settings.listen_client_urls)
    return membership, server, transport


def main(argv=None):
    try:
        settings, notes = settings_mod.parse(argv)
    except settings_mod.UsageError as exc:
        sys.stderr.write("%s: %s\n" % (settings_mod.PROG, exc))
        sys.exit(2)
    setup_logging(settings.log_level)
    for level, message in notes:
        getattr(log, level)("%s", message)
    log.info("starting %s proxy (this proxy supports the v2 API only)", settings.proxy)
    try:
        membership, server, transport = build(settings)
    except OSError as exc:
        log.error("cannot listen on %s: %s", ",".join(settings.listen_client_urls), exc)
        sys.exit(1)
    stopping = Event()

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
    log.info("stopped")
    return 0
