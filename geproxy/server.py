"""geproxy.server: listening sockets and the pywsgi handler in front of the app.

* Listeners are made here with TCP_NODELAY: pywsgi writes the headers and the
  body in two sends, and with Nagle on every keep-alive response would wait
  ~40 ms for a delayed ACK (gevent#1233).  Linux copies the option to accepted
  sockets; the handler sets it again for listeners made elsewhere.
* Each client connection carries a ``Binding`` (endpoints.py) so that its
  requests stay on one member, released when the connection closes.
* The handler keeps the raw request target (``RAW_URI``: pywsgi decodes
  PATH_INFO, which would turn ``%2F`` into ``/``) and the client socket (for
  the disconnect guard) in the environ.
* Requests with ambiguous framing get 400 before the app sees them: both
  Content-Length and Transfer-Encoding, a transfer coding other than chunked,
  or HTTP/1.1 without Host (as Go's server).
* Idle keep-alive connections (``--proxy-client-idle-timeout``): the wait for
  the next request line is bounded, then the connection is closed.  A
  connection whose request waits on a watch is inside the app, not reading a
  request line, so it is never cut by this.
* Connection cap and running out of files: new connections are shed quickly,
  never queued and never a crash.  Over ``--proxy-max-connections`` (counted
  over all listeners of the process) a new connection is accepted, told
  ``503`` with ``Connection: close`` and closed (a bounded linger lets the
  client read it).  gevent's own behaviour would differ in both cases: with a
  full ``Pool(n)`` it stops accepting, so new clients hang in the backlog; on
  EMFILE/ENFILE it prints a traceback and pauses accepting (up to 1 s), again
  leaving clients in the backlog.  Here, on EMFILE/ENFILE one spare descriptor
  kept for the purpose is released, the waiting connections are accepted and
  closed at once (the clients see a reset right away and can try another
  proxy), and the spare is taken back; serving resumes as soon as
  connections close.  The soft open-files limit is raised to the hard one at
  start (``raise_open_files_limit``).
"""

import errno
import logging
import os
import socket
import time
import types
from urllib.parse import urlsplit

import gevent
from gevent import pywsgi
from gevent.monkey import get_original
from gevent.pool import Pool

from geproxy.disconnect import CLIENT_SOCKET
from geproxy.endpoints import BINDING, Binding

log = logging.getLogger("geproxy.server")

BACKLOG = 2048
READ_BUFFER = 1024  # per connection; pywsgi's default 8 KiB is most of an idle connection
SHED_LINGER = 1.0  # seconds a shed connection may take to read its 503
MAX_LINGERING = 1024  # shed connections lingering at once; further ones are just closed
SHED_BATCH = 128  # connections shed per wake-up when out of files
PAUSE_NO_FILES = 0.1  # seconds accepting pauses when not even the spare helps
WARN_EVERY = 10.0  # seconds between two warnings about shedding
_SHED_BODY = b'{"message":"httpproxy: too many client connections"}'
SHED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_SHED_BODY)
                 + _SHED_BODY)


def raise_open_files_limit():
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) now in force.

    Each client connection costs a descriptor, and each watch that is not
    shared another one upstream.  An unlimited hard limit is taken as the
    kernel's per-process ceiling (/proc/sys/fs/nr_open).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def listen_address(url):
    """('host', port) from an http://host:port listen URL."""
    parts = urlsplit(url)
    return parts.hostname, parts.port


def make_listener(host, port, backlog=BACKLOG):
    """A bound, listening TCP socket with SO_REUSEADDR and TCP_NODELAY."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ProxyHandler(pywsgi.WSGIHandler):
    """pywsgi's handler plus NODELAY, the raw target, stricter framing checks and
    the idle timeout (the server's ``idle_timeout``, seconds, 0 = none)."""

    def __init__(self, sock, address, server, rfile=None):
        # A request line and headers fit in 1 KiB; longer ones take more
        # reads, and bodies larger than the buffer are read straight through.
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER)
        super().__init__(sock, address, server, rfile)

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.binding = Binding()  # which member this connection's requests go to
        try:
            super().handle()
        finally:
            self.binding.release()

    def handle_one_response(self):
        # The parsed request headers are all in the environ by now; drop the
        # message object rather than keep it while a watch waits.
        self.headers = None
        super().handle_one_response()

    _head = None  # response head held back to go out with the body (see process_result)

    def process_result(self):
        # One send per response where pywsgi would make two or three: a body
        # known in full goes out with the head (pywsgi sends them apart,
        # gevent#1233), and a watch answered after its headers went out early
        # sends its one chunk with the end of the chunked body (with thousands
        # of clients woken by one event, the syscalls add up).
        result = self.result
        if type(result) is not list or len(result) != 1 or not result[0]:
            return super().process_result()
        data = result[0]
        if self.headers_sent:
            if self.response_use_chunked:
                self._sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
                return None
            return super().process_result()
        self._head = b""  # _sendall: hold the head, send it with the body
        try:
            self.write(data)
        finally:
            head, self._head = self._head, None
            if head:  # nothing followed the head
                super()._sendall(head)
        if self.response_use_chunked:
            self._sendall(b"0\r\n\r\n")
        return None

    def _sendall(self, data):
        head = self._head
        if head is not None:
            if not head:
                self._head = bytes(data)
                return
            self._head = None
            data = head + data
        super()._sendall(data)

    def log_request(self):
        # pywsgi formats an access-log line (a datetime.now() and more) for every
        # request even when the log is off; skip that when it is.
        if getattr(self.server, "access_log", True):
            super().log_request()

    def read_requestline(self):
        # A socket timeout bounds the wait for the next request, cheaper per
        # request than a gevent.Timeout; it is lifted for the rest of the request.
        idle = getattr(self.server, "idle_timeout", 0)
        if not idle:
            return super().read_requestline()
        self.socket.settimeout(idle)
        try:
            return super().read_requestline()
        except socket.timeout:
            return ""  # pywsgi closes the connection on an empty request line
        finally:
            self.socket.settimeout(None)

    def MessageClass(self, *args):
        headers = super().MessageClass(*args)
        coding = headers.get("Transfer-Encoding")
        if coding is not None:
            if headers.get("Content-Length") is not None:
                raise ValueError("both Content-Length and Transfer-Encoding given")
            if coding.strip().lower() != "chunked":
                raise ValueError("unsupported Transfer-Encoding %r" % coding)
        if len(headers.get_all("Content-Length") or ()) > 1:
            raise ValueError("more than one Content-Length")
        return headers

    def read_request(self, raw_requestline):
        ok = super().read_request(raw_requestline)
        if ok and self.request_version == "HTTP/1.1" and self.headers.get("Host") is None:
            raise ValueError("missing required Host header")
        return ok

    def get_environ(self):
        env = super().get_environ()
        env["RAW_URI"] = self.path
        env[CLIENT_SOCKET] = self.socket
        env[BINDING] = self.binding
        return env


class _ErrorLog:
    """pywsgi's error_log (client parse errors) into logging, one line each."""

    def write(self, message):
        message = message.strip()
        if message:
            log.info("%s", message)

    def flush(self):
        pass


# gevent's patched os.close defers closing a socket or device to the next loop
# turn; the spare must be free at once for the accept() right after it.
_close_now = get_original("os", "close")


def _open_spare():
    """A descriptor held in reserve, released to accept-and-close when out of files."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Gate:
    """Admission shared by one process's listeners: the connection cap and the spare fd.

    ``pool`` holds one greenlet per served connection, so its length is the
    number of open client connections; ``max_connections`` 0 means no cap.
    """

    def __init__(self, pool, max_connections=0):
        self.pool = pool
        self.max_connections = max_connections or 0
        self.lingering = 0
        self.shed_total = 0
        self._spare = _open_spare()
        self._warned_at = None

    def full(self):
        return bool(self.max_connections) and len(self.pool) >= self.max_connections

    def _warn(self, reason):
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("shedding new client connections: %s (%d open, %d shed so far)",
                        reason, len(self.pool), self.shed_total)

    def shed(self, sock):
        """Over the cap: a 503 with Connection: close, then close (bounded linger)."""
        self.shed_total += 1
        self._warn("at most %d allowed (--proxy-max-connections)" % self.max_connections)
        if self.lingering >= MAX_LINGERING:
            sock.close()
            return
        self.lingering += 1
        gevent.spawn(self._answer_busy, sock)

    def _answer_busy(self, sock):
        try:
            with gevent.Timeout(SHED_LINGER, False):
                sock.sendall(SHED_RESPONSE)
                sock.shutdown(socket.SHUT_WR)
                # Read until the client closes: closing with its request unread
                # would send a reset, which can destroy the 503 before it is read.
                while sock.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            self.lingering -= 1
            sock.close()

    def out_of_files(self, server, exc):
        """accept() failed with EMFILE/ENFILE: shed what waits, never spin.

        Linux reports EMFILE before it looks at the backlog, so this also
        runs when nobody waits; then there is nothing to do.
        """
        shed, stuck = 0, self._spare is None
        if not stuck:
            _close_now(self._spare)
            self._spare = None
            for _ in range(SHED_BATCH):
                try:
                    fd, _address = server.socket._accept()
                except BlockingIOError:  # nobody (else) waits
                    break
                except OSError:  # the freed descriptor went elsewhere (ENFILE)
                    stuck = True
                    break
                _close_now(fd)  # never watched by the loop, so closing it at once is safe
                shed += 1
            self._spare = _open_spare()
        if shed or stuck:
            self.shed_total += shed
            self._warn("out of file descriptors (%s)" % (exc.strerror or exc))
        if stuck:  # nothing could be done: pause, as gevent would, but quietly
            server.stop_accepting()
            server._timer = server.loop.timer(PAUSE_NO_FILES)
            server._timer.start(server._start_accepting_if_started)

    def closed(self):
        """A connection ended: take the spare back if it was lost."""
        if self._spare is None:
            self._spare = _open_spare()

    def close(self):
        if self._spare is not None:
            _close_now(self._spare)
            self._spare = None


class _WSGIServer(pywsgi.WSGIServer):
    """pywsgi's server with the Gate in front of the pool, and the idle timeout."""

    access_log = False  # built with log=None

    def __init__(self, *args, gate, idle_timeout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.idle_timeout = idle_timeout

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.gate.out_of_files(self, exc)
            return None

    def do_handle(self, sock, address):
        if self.gate.full():
            self.gate.shed(sock)
            return
        super().do_handle(sock, address)

    def do_close(self, sock, *args):
        super().do_close(sock, *args)
        self.gate.closed()


class ProxyServer:
    """One pywsgi server per listen URL, all serving the same app.

    ``max_connections`` caps the client connections of this process over all
    listeners (0 = only the open-files limit); ``idle_timeout`` closes a
    keep-alive connection that sends no new request for that many seconds
    (0 = never).  Both shed or close, see the module docstring.
    """

    def __init__(self, app, listen_urls, max_connections=0, idle_timeout=0.0):
        self.servers = []
        pool = Pool()  # unbounded: the Gate sheds over the cap instead of pausing accept
        self.gate = Gate(pool, max_connections)
        # A WSGI app that is an object with __call__ is entered through C
        # (slot_tp_call), one more interpreter frame on the C stack that every
        # waiting connection's greenlet keeps a copy of; a bound method is not.
        call = getattr(type(app), "__call__", None)
        if isinstance(call, types.FunctionType):  # a class with a Python __call__
            app = types.MethodType(call, app)
        try:
            for url in listen_urls:
                host, port = listen_address(url)
                listener = make_listener(host, port)
                server = _WSGIServer(
                    listener, app, handler_class=ProxyHandler, spawn=pool,
                    log=None, error_log=_ErrorLog(),
                    environ={"SERVER_NAME": host, "SERVER_PORT": str(port)},
                    gate=self.gate, idle_timeout=idle_timeout or 0.0)
                self.servers.append(server)
        except OSError:
            self.close()
            raise

    @property
    def addresses(self):
        return [server.address for server in self.servers]

    def start(self):
        for server in self.servers:
            server.start()
            log.info("listening for client requests on %s:%s", *server.address[:2])

    def close(self):
        """Stop accepting new connections."""
        for server in self.servers:
            server.close()

    def stop(self, timeout=1.0):
        for server in self.servers:
            server.stop(timeout=timeout)
        self.gate.close()
