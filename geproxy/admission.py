"""geproxy.admission: which new client connections are served, and how the rest are shed.

New connections are shed quickly, never queued and never a crash.  Over
``--proxy-max-connections`` (counted over all listeners of the process) a new
connection is accepted, told ``503`` with ``Connection: close`` and closed (a
bounded linger lets the client read it); on an https listener it is closed
at once, since a client that expects a TLS handshake cannot read a plain 503
(the Go proxy has no cap, so nothing to match here).  gevent's own behaviour
would differ in both cases: with a full ``Pool(n)`` it stops accepting, so new
clients hang in the backlog; on EMFILE/ENFILE it prints a traceback and pauses
accepting (up to 1 s), again leaving clients in the backlog.  Here, on EMFILE/ENFILE one
spare descriptor kept for the purpose is released, the waiting connections
are accepted and closed at once (the clients see a reset right away and can
try another proxy), and the spare is taken back; serving resumes as soon as
connections close.

Sharing a burst between workers (``Board``): under ``--workers`` every worker
accepts from the same listening socket, and whichever wakes first takes the
whole queue.  A worker that already holds more connections than a live
sibling leaves the rest of a burst to it, while the queue is short: a long
one (a thousand clients at once) wakes every worker, each takes its hundred
a turn, and holding back would only make the queue wait.
"""

import ctypes
import logging
import multiprocessing
import os
import socket
import struct

import gevent
from gevent.monkey import get_original

from geproxy.errors import error_answer
from geproxy.logs import Every

log = logging.getLogger("geproxy.admission")

SHED_LINGER = 1.0  # seconds a shed connection may take to read its 503
MAX_LINGERING = 1024  # shed connections lingering at once; further ones are just closed
SHED_BATCH = 128  # connections shed per wake-up when out of files
PAUSE_NO_FILES = 0.1  # seconds accepting pauses when not even the spare helps
WARN_EVERY = 10.0  # seconds between two warnings about shedding
SLACK = 1  # connections a worker may hold above its least loaded sibling and still accept
PASS_ON = 0.002  # seconds a worker ahead waits for a sibling to take a connection
SEATS = 64  # workers the board has room for (more are not held back)
SEAT_WAIT = 1.0  # seconds a new worker waits for the board's lock before going without a seat
LONG_QUEUE = 64  # connections waiting to be accepted from which no worker holds back
_TCPI_UNACKED = 24  # offset in Linux's struct tcp_info: a listener's accept queue length


def _shed_response():
    status, headers, body = error_answer("503 Service Unavailable",
                                         "httpproxy: too many client connections", close=True)
    head = "".join("%s: %s\r\n" % pair for pair in headers)
    return ("HTTP/1.1 %s\r\n%s\r\n" % (status, head)).encode("latin-1") + body


SHED_RESPONSE = _shed_response()


# gevent's patched os.close defers closing a socket or device to the next loop
# turn; the spare must be free at once for the accept() right after it.
_close_now = get_original("os", "close")


def _open_spare():
    """A descriptor held in reserve, released to accept-and-close when out of files."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Board:
    """The open connection counts of all workers, in memory the arbiter shares with them.

    Why: wrk opening 50 connections at once against two workers left them
    split 50/0, 49/1, 44/6 and 39/11 in four runs: the first worker to wake
    took the whole queue, and the other one's core stayed idle.  Made before
    the fork; each worker takes a ``seat``.

    A worker takes the first seat that is free or whose worker has exited,
    under a lock the workers share: seats numbered by gunicorn's worker age
    (which grows with every respawn) put two live workers on one seat once the
    ages drifted a multiple of the board's size apart.
    """

    def __init__(self, seats=SEATS):
        self.counts = multiprocessing.RawArray(ctypes.c_long, seats)
        self.pids = multiprocessing.RawArray(ctypes.c_long, seats)  # 0: a free seat
        self._lock = multiprocessing.Lock()

    def seat(self):
        """A place on the board for this process, or None when every seat has a live
        worker (this one is then neither held back nor holds others back)."""
        if not self._lock.acquire(timeout=SEAT_WAIT):  # its holder died holding it
            return None
        try:
            pids = self.pids
            for index, pid in enumerate(pids):
                if not pid or not _alive(pid):
                    return Seat(self, index)
            return None
        finally:
            self._lock.release()


class Seat:
    """One worker's count on a Board, and how it compares with its live siblings'."""

    def __init__(self, board, index):
        self.board = board
        self.index = index
        board.counts[index] = 0
        board.pids[index] = os.getpid()

    def update(self, count):
        self.board.counts[self.index] = count

    def ahead(self):
        """True when a live sibling holds more than SLACK fewer connections than this one."""
        counts, pids = self.board.counts, self.board.pids
        mine = counts[self.index] - SLACK
        for index, pid in enumerate(pids):
            if pid and index != self.index and counts[index] < mine and _alive(pid):
                return True
        return False

    def leave(self):
        self.board.pids[self.index] = 0


def queued(listener):
    """Connections waiting in a TCP listener's accept queue (Linux), or None if unknown."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack_from("I", info, _TCPI_UNACKED)[0]
    except (OSError, AttributeError, struct.error):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, and someone else's
        pass
    return True


class Gate:
    """Admission shared by one process's listeners: the connection cap and the spare fd.

    ``open`` counts the client connections being served (``opened()`` when
    one is handed to a handler, ``closed()`` when it ends; an idle connection
    that gave up its greenlet still counts); ``max_connections`` 0 means no cap.
    Under --workers, ``join`` puts this count on the workers' Board.
    """

    def __init__(self, max_connections=0):
        self.open = 0
        self.seat = None
        self.max_connections = max_connections or 0
        self.lingering = 0
        self.shed_over_cap = 0  # connections shed over --proxy-max-connections
        self.shed_no_files = 0  # connections shed while out of file descriptors
        self._spare = _open_spare()
        self._warn_every = Every(log, interval=WARN_EVERY)

    def full(self):
        return bool(self.max_connections) and self.open >= self.max_connections

    def join(self, seat):
        """Tell the siblings this worker's count from now on (a Board's Seat)."""
        self.seat = seat
        self._count(0)

    def _count(self, change):
        self.open += change
        if self.seat is not None:
            self.seat.update(self.open)

    def opened(self):
        self._count(1)

    def pass_on(self, listener):
        """Whether to leave the connections waiting on ``listener`` to a sibling worker
        with fewer: this worker is ahead and the queue is short."""
        if self.seat is None or not self.seat.ahead():
            return False
        waiting = queued(listener)
        return waiting is not None and waiting < LONG_QUEUE

    def _warn(self, reason):
        self._warn_every("shedding new client connections: %s (%d open, %d shed so far)",
                         reason, self.open, self.shed_over_cap + self.shed_no_files)

    def shed(self, sock, tls=False):
        """Over the cap: a 503 with Connection: close, then close (bounded linger);
        with ``tls`` (an https listener, before any handshake) just close."""
        self.shed_over_cap += 1
        self._warn("at most %d allowed (--proxy-max-connections)" % self.max_connections)
        if tls or self.lingering >= MAX_LINGERING:
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
            self.shed_no_files += shed
            self._warn("out of file descriptors (%s)" % (exc.strerror or exc))
        if stuck:  # nothing could be done: pause, as gevent would, but quietly
            server.stop_accepting()
            server._timer = server.loop.timer(PAUSE_NO_FILES)
            server._timer.start(server._start_accepting_if_started)

    def closed(self):
        """A connection ended: one fewer open; take the spare back if it was lost."""
        self._count(-1)
        if self._spare is None:
            self._spare = _open_spare()

    def retire(self):
        """No more new connections here: off the board."""
        if self.seat is not None:
            self.seat.leave()
            self.seat = None

    def close(self):
        self.retire()
        if self._spare is not None:
            _close_now(self._spare)
            self._spare = None
