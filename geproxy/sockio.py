"""geproxy.sockio: lean socket reads and writes: the one place that knows gevent's insides.

gevent's cooperative socket does the right thing for any caller, and it costs
a data plane that makes four socket calls per request: ``sendall`` asks the
kernel for SO_SNDBUF on every call and slices a memoryview, and ``recv`` on a
socket with nothing to read yet first fails with EAGAIN, raises and catches
an OSError, and only then waits.  Measured on this project's proxy, doing
this directly saves 5-7 µs per GET (bench/README.md).  So ``Wire`` does:

* send: one ``send()`` on the kernel socket, and a wait for writability only
  for a remainder (a full socket buffer);
* receive: ``recv_wait`` waits for readability first, then reads once (what a
  member's answer or a keep-alive client's next request needs: it is never
  there yet); ``recv`` tries first (data may already be waiting).

That needs things gevent does not promise to keep: the kernel socket
object under a gevent socket (``_sock``), the socket's write watcher
(``_write_event``) and, for TLS, the OpenSSL object under its SSLSocket
(``_sslobj``).  They are taken here and nowhere else; ``check_gevent_internals`` (run by ``tests/test_sockio.py``, and
``setup.py`` pins the gevent range it passed on) fails loudly on a gevent
whose layout differs.  The waiting itself uses gevent's public ``Waiter``
and loop watchers; a wait with a timeout starts a bare loop timer instead of
a ``gevent.Timeout`` (0.2 µs against 3 µs per wait, twice per request,
measured).  The timer is made for each wait: one kept per connection and
re-armed lost I/O wake-ups under load here.

TLS sockets are read and written through OpenSSL (``TLSWire``): encrypted
bytes on the kernel socket are not the application's, and OpenSSL may hold
decrypted bytes that a readability check would not see.  They are kept
non-blocking, so a read or write is tried first and only OpenSSL's want-read
or want-write waits, on the same watchers and loop timers as ``Wire``
(gevent's blocking SSLSocket would start a Timeout per timed read and ask
for SO_SNDBUF per send; its non-blocking one cannot say which want it met).  Everything above this module uses one ``Wire``
interface for both.
"""

import _socket
import socket as _stdsocket
from ssl import SSLEOFError, SSLWantReadError, SSLWantWriteError

from gevent.hub import Waiter, get_hub

RECV_SIZE = 65536


def check_gevent_internals(sock):
    """Raise RuntimeError unless a gevent socket has the parts Wire relies on."""
    tls = hasattr(sock, "getpeercert")
    missing = [name for name in ("_sock", "_write_event") + (("_sslobj",) if tls else ())
               if not hasattr(sock, name)]
    if missing:
        raise RuntimeError("gevent socket %r lacks %s: this gevent's internals differ from "
                           "the ones geproxy.sockio was written for" % (type(sock), missing))
    raw = sock._sock
    if not isinstance(raw, _socket.socket) or raw.gettimeout() != 0.0:
        raise RuntimeError("gevent socket's _sock is not a non-blocking kernel socket")
    if getattr(sock._write_event, "fd", None) != raw.fileno():
        raise RuntimeError("gevent socket's _write_event does not watch its descriptor")
    if tls and not all(hasattr(sock._sslobj, name) for name in ("read", "write", "pending")):
        raise RuntimeError("gevent SSLSocket's _sslobj is not an OpenSSL socket object")


class Wire:
    """Reads and writes on one connected gevent socket (plain TCP or Unix).

    Timeouts are in seconds (None: wait forever) and raise ``socket.timeout``.

    Reads wait on a watcher of the Wire's own that stays started from one read
    to the next: stopping and starting it around every wait made the event
    loop change the epoll set (an epoll_ctl system call) twice per request.
    Readable with nobody waiting (the peer closed an idle connection, a
    pipelined request while the answer is being made), it stops itself until
    the next wait.  ``close()`` stops it for good.
    """

    __slots__ = ("sock", "raw", "_io", "_waiter", "_writable")

    tls = False

    def __init__(self, sock):
        self.sock = sock
        self.raw = sock._sock
        self._io = None
        self._waiter = None
        self._writable = sock._write_event

    def fileno(self):
        return self.raw.fileno()

    def _readable(self):
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.switch(waiter)
        else:
            self._io.stop()

    def wait_readable(self, timeout):
        """Block this greenlet until the socket is readable; socket.timeout after ``timeout`` s."""
        hub = get_hub()
        io = self._io
        if io is None:
            io = self._io = hub.loop.io(self.raw.fileno(), 1)
        waiter = self._waiter = Waiter(hub)
        if not io.active:
            io.start(self._readable)
        if timeout is None:
            try:
                waiter.get()
            finally:
                self._waiter = None
            return
        timer = hub.loop.timer(timeout)
        timer.start(waiter.switch, None)
        try:
            fired = waiter.get()
        finally:
            self._waiter = None
            timer.close()
        if fired is None:
            raise _stdsocket.timeout("timed out")

    def on_readable(self, callback):
        """Call ``callback()`` from the event loop when the socket is readable (None: stop).

        For a connection that waits without a greenlet of its own.
        """
        io = self._io
        if io is None:
            io = self._io = get_hub().loop.io(self.raw.fileno(), 1)
        io.stop()
        if callback is not None:
            io.start(callback)

    def wait(self, watcher, timeout):
        """Block this greenlet until ``watcher`` fires; socket.timeout after ``timeout`` s."""
        hub = get_hub()
        waiter = Waiter(hub)
        watcher.start(waiter.switch, waiter)
        timer = None
        if timeout is not None:
            timer = hub.loop.timer(timeout)
            timer.start(waiter.switch, None)
        try:
            fired = waiter.get()
        finally:
            watcher.stop()
            if timer is not None:
                timer.close()
        if fired is None:
            raise _stdsocket.timeout("timed out")

    def recv_wait(self, timeout=None):
        """Wait until readable, then read once: b'' means the peer closed."""
        self.wait_readable(timeout)
        try:
            return self.raw.recv(RECV_SIZE)
        except BlockingIOError:  # a spurious wake-up: wait again
            return self.recv(timeout)

    def recv(self, timeout=None):
        """Read what is there, waiting only if nothing is."""
        raw = self.raw
        while True:
            try:
                return raw.recv(RECV_SIZE)
            except BlockingIOError:
                self.wait_readable(timeout)

    def ready(self):
        """Bytes waiting to be read right now (b'' if the peer closed), or None."""
        try:
            return self.raw.recv(RECV_SIZE, _stdsocket.MSG_PEEK)
        except BlockingIOError:
            return None

    def send_all(self, data, timeout=None):
        """Send all of ``data``: one send() for the usual case, waiting only when full."""
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            self.wait(self._writable, timeout)
            try:
                view = view[self.raw.send(view):]
            except BlockingIOError:
                pass

    def shutdown_write(self):
        try:
            self.raw.shutdown(_stdsocket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        io, self._io = self._io, None
        if io is not None:
            io.stop()
            io.close()
        self.sock.close()


class TLSWire(Wire):
    """The same interface over a gevent ``SSLSocket``, through its OpenSSL object.

    ``sock._sslobj`` (the ``_ssl._SSLSocket`` gevent's SSLSocket wraps) is read
    and written directly: it reports OpenSSL's want-read and want-write as
    exceptions, while gevent's non-blocking ``send`` returns 0 for either,
    which does not say what to wait for (taken as sent, it lost the rest of an
    answer larger than the socket buffer), and every gevent method adds a
    layer of Python per call.
    """

    __slots__ = ("ssl",)

    tls = True

    def __init__(self, sock):
        self.sock = sock
        self.raw = sock
        self.ssl = sock._sslobj
        self._io = self._waiter = None
        self._writable = sock._write_event
        sock.settimeout(0.0)  # after the handshake: OpenSSL's wants are waited for here

    def recv_wait(self, timeout=None):
        """Wait until readable unless OpenSSL already holds decrypted bytes, then read
        (no failed SSL_read first: OpenSSL reads no further ahead than the record it
        decrypts, so the next record's bytes still wake the watcher)."""
        if not self.ssl.pending():
            self.wait_readable(timeout)
        return self.recv(timeout)

    def recv(self, timeout=None):
        ssl = self.ssl
        while True:
            try:
                return ssl.read(RECV_SIZE)  # b"" after the peer's close_notify
            except SSLWantReadError:
                self.wait_readable(timeout)
            except SSLWantWriteError:
                self.wait(self._writable, timeout)
            except SSLEOFError:
                return b""  # closed without close_notify: an end all the same

    def ready(self):
        if self.ssl.pending():
            return b"?"  # decrypted bytes are waiting
        try:
            return self.sock._sock.recv(1, _stdsocket.MSG_PEEK) and b"?"
        except BlockingIOError:
            return None

    def send_all(self, data, timeout=None):
        """All of ``data`` in one SSL_write (OpenSSL writes all or nothing here),
        retried with the same bytes after a want."""
        ssl = self.ssl
        while True:
            try:
                ssl.write(data)
                return
            except SSLWantWriteError:
                self.wait(self._writable, timeout)
            except SSLWantReadError:
                self.wait_readable(timeout)

    def shutdown_write(self):
        """Nothing: TLS has no half-close here (SSL_shutdown comes only with
        ``unwrap()``, which waits for the peer's close_notify; ``close()``
        sends none).  The answers that call this say ``Connection: close``."""


def wire(sock):
    """The Wire for a connected socket (TLS or not)."""
    return TLSWire(sock) if hasattr(sock, "getpeercert") else Wire(sock)
