"""geproxy.server: pywsgi servers running our handler, one per listen URL.

``PyWSGIServer`` is ``gevent.pywsgi.WSGIServer`` with what the proxy adds
around connections (the requests themselves are ``handler.ProxyHandler``'s):

* the ``Gate`` (admission.py) in front of the pool: the connection cap and
  shedding when out of files;
* the client timeouts the handler reads: ``idle_timeout`` between requests,
  ``header_timeout`` for a started head (and each read of a body);
* an ``ssl.SSLContext`` for https listeners (the handshake runs in the
  connection's greenlet, bounded by the header timeout);
* ``drain()``: stop accepting, close the connections that wait for a next
  request; requests in flight go on (graceful shutdown).

``ProxyServer`` makes one of those per listen URL of a single process, all
sharing one pool and one Gate.  Under ``--workers`` gunicorn makes them
(workers.py), with the same class.
"""

import errno
import logging
import os
import types

from gevent import getcurrent, pywsgi
from gevent.pool import Pool

from geproxy.admission import PASS_ON, Gate
from geproxy.handler import ProxyHandler
from geproxy.listeners import BACKLOG, bound_url, listen_address, make_listener, unix_path
from geproxy.logs import Every

log = logging.getLogger("geproxy.server")

REJECTED_EVERY = 10.0  # seconds between two info lines about refused client input
WORKER_ACCEPTS = 100  # connections a worker accepts per loop turn (gevent's default)


class ErrorLog:
    """pywsgi's error_log (what gevent itself reports) into logging, one line each."""

    def write(self, message):
        message = message.strip()
        if message:
            log.info("%s", message)

    def flush(self):
        pass


class StartNowPool(Pool):
    """gevent's Pool, except that a greenlet started from the event loop runs at once.

    gevent starts a spawned greenlet from the loop's callback queue, and runs
    that queue for at most the switch interval (5 ms) per loop turn.  A new
    connection's greenlet reads, parses and forwards its first request before
    it first waits (~80 µs), so at most ~60 connections began per turn; at
    wrk -c1000 a turn takes ~45 ms, and a burst of 1,000 new connections,
    all accepted within 60 ms, took 650-830 ms to begin (measured): their
    first requests were the slowest 2 % of the run.  Accepting a connection
    and waking a parked one happen in the event loop itself, which switches
    into the greenlet directly, as it does to resume one whose socket is ready.
    """

    def start(self, greenlet, blocking=True, timeout=None):
        self.add(greenlet, blocking, timeout)
        if getcurrent() is greenlet.parent:  # the event loop (the hub)
            greenlet.switch()
        else:
            greenlet.start()


def plain_call(app):
    """The app as a bound method when it is an object with a Python ``__call__``.

    Such an app is entered through C (slot_tp_call): one more interpreter
    frame on the C stack that every waiting connection's greenlet keeps a
    copy of; a bound method is not.
    """
    call = getattr(type(app), "__call__", None)
    if isinstance(call, types.FunctionType):
        return types.MethodType(call, app)
    return app


class PyWSGIServer(pywsgi.WSGIServer):
    """pywsgi's server with the Gate, the client timeouts, TLS and drain()."""

    handler_class = ProxyHandler

    def __init__(self, listener, application, *, gate, idle_timeout=0.0, header_timeout=0.0,
                 ssl_context=None, **kwargs):
        kwargs.setdefault("log", None)
        kwargs.setdefault("error_log", ErrorLog())
        super().__init__(listener, plain_call(application), **kwargs)
        self.gate = gate
        self.idle_timeout = idle_timeout or 0.0
        self.header_timeout = header_timeout or 0.0
        self.ssl_context = ssl_context
        if ssl_context is not None:
            self.environ["wsgi.url_scheme"] = "https"
        self.connections = set()  # live ProxyHandlers
        self.parked = {}  # socket -> its ProxyHandler, for idle connections without a greenlet
        self.draining = False
        self._passed = False  # the last accept was left to a sibling (admission.Board)
        self._pass_timer = None
        self.rejected = Every(log, logging.INFO, REJECTED_EVERY, debug=True)

    def set_max_accept(self):
        """How many queued connections to accept per loop turn: all of them in one
        process, gevent's 100 in worker mode.

        A turn under load takes 10-45 ms here, so a burst of new connections
        taken 100 a turn waits for turns in the listen queue: at wrk -c1000 the
        last of the burst began a few hundred ms late, and those first requests
        were the run's slowest.  One process has nobody to share a burst with
        (accepting all that are queued: one worker's req/s 1.38x Go's against
        1.21x, p99.9 232-325 ms against 265-494, five alternating rounds).
        Workers do: every worker wakes for a burst, and at 100 a turn two took
        516 and 484 of 1,000.  pywsgi itself accepts one per turn under
        ``wsgi.multiprocess``, which left a burst in the queue for seconds.
        """
        self.max_accept = WORKER_ACCEPTS if self.environ.get("wsgi.multiprocess") else BACKLOG

    def do_read(self):
        if not self._passed and self.gate.pass_on(self.socket):
            # a sibling worker holds fewer: leave it the queue for a moment
            self._passed = True
            self.stop_accepting()
            self._pass_timer = self.loop.timer(PASS_ON)
            self._pass_timer.start(self._resume_accepting)
            return None
        self._passed = False
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.gate.out_of_files(self, exc)
            return None

    def _resume_accepting(self):
        """After PASS_ON: accept again, at least one (progress, whatever the board says)."""
        self._pass_timer.close()
        self._pass_timer = None
        if self.started:
            self.start_accepting()

    def do_handle(self, sock, address):
        if self.gate.full():
            self.gate.shed(sock, tls=self.ssl_context is not None)
            return
        self.gate.opened()
        super().do_handle(sock, address)

    def do_close(self, sock, *args):
        """After the first greenlet of a connection: closed by its handler, unless parked."""
        if sock not in self.parked:
            super().do_close(sock, *args)

    def drain(self):
        """Stop accepting and close idle keep-alive connections; requests in flight go on."""
        self.draining = True
        self.gate.retire()  # siblings no longer leave bursts to this worker
        self.close()
        for handler in list(self.parked.values()):
            handler.expire()
        for handler in list(self.connections):
            if handler.idle and handler.greenlet is not None:
                handler.greenlet.kill(block=False)
            else:
                handler.close_after_answer()


class ProxyServer:
    """One PyWSGIServer per listen URL, all serving the same app.

    ``max_connections`` caps the client connections of this process over all
    listeners (0 = only the open-files limit); ``idle_timeout`` closes a
    keep-alive connection that sends no new request for that many seconds
    and ``header_timeout`` one whose started head does not complete (0 =
    never).  ``tls_contexts`` maps an https listen URL to its SSLContext;
    ``handler_class`` replaces ProxyHandler (the access log's subclass).
    """

    def __init__(self, app, listen_urls, max_connections=0, idle_timeout=0.0,
                 header_timeout=0.0, tls_contexts=None, handler_class=None):
        self.servers = []
        self.urls = list(listen_urls)
        extra = {"handler_class": handler_class} if handler_class is not None else {}
        pool = StartNowPool()  # unbounded: the Gate sheds over the cap instead of pausing accept
        self.gate = Gate(max_connections)
        tls_contexts = tls_contexts or {}
        try:
            for url in listen_urls:
                host, port = listen_address(url)
                listener = make_listener(host, port)
                server = PyWSGIServer(
                    listener, app, spawn=pool, gate=self.gate,
                    environ={"SERVER_NAME": host, "SERVER_PORT": str(port or "")},
                    idle_timeout=idle_timeout, header_timeout=header_timeout,
                    ssl_context=tls_contexts.get(url), **extra)
                self.servers.append(server)
        except OSError:
            self.close()
            raise

    @property
    def addresses(self):
        return [server.address for server in self.servers]

    def start(self):
        for url, server in zip(self.urls, self.servers):
            server.start()
            log.info("listening for client requests on %s", bound_url(url, server.address))

    def close(self):
        """Stop accepting new connections."""
        for server in self.servers:
            server.close()

    def drain(self):
        for server in self.servers:
            server.drain()

    def stop(self, timeout=1.0):
        """Stop accepting, close idle connections; the rest are cut after ``timeout`` s."""
        self.drain()
        if self.servers:
            self.servers[0].pool.join(timeout=timeout)  # one pool for all listeners
        for server in self.servers:
            server.stop(timeout=0)
        self.release()

    def release(self):
        """What outlives the stopped listeners: the Gate's spare descriptor, Unix socket files."""
        self.gate.close()
        for url in self.urls:
            path = unix_path(url)
            if path is not None and os.path.exists(path):  # as etcd: the socket file goes
                os.unlink(path)
