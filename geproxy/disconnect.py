"""geproxy.disconnect: notice a client that leaves while its watch waits upstream.

pywsgi does not read the client socket while the application runs, so a client
that hangs up during a long-poll goes unnoticed until the next write; the
upstream request and the member's watcher would live on until the key changes.
A small greenlet waits for the client socket to become readable: readable with
no data means the client closed, and the request greenlet is interrupted with
``ClientGone`` (a GreenletExit, so gevent logs no traceback), which closes the
upstream response in the app's ``finally``.  Readable *with* data is a
pipelined next request: not a disconnect, so the guard just stops watching.

The guard is a bare event-loop watcher with a callback, not a greenlet: with
ten thousand clients waiting on watches, a greenlet each (and its saved stack)
would be most of the proxy's memory.
"""

import socket

import gevent
from gevent import get_hub

CLIENT_SOCKET = "geproxy.client_socket"
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class ClientGone(gevent.GreenletExit):
    """The client closed its connection while its request was being served."""


class _Guard:
    """Watches one client socket until ``cancel()``; kills the request on EOF.

    The callback runs in the hub, so it must never block: it peeks with
    MSG_DONTWAIT on the raw socket and only schedules the kill.
    """

    __slots__ = ("_io", "_sock", "_greenlet")

    def __init__(self, sock=None, greenlet=None):
        self._io = None
        self._sock = sock
        self._greenlet = greenlet
        if sock is not None:
            self._io = get_hub().loop.io(sock.fileno(), 1)
            self._io.start(self._readable)

    def _readable(self):
        try:
            data = self._sock.recv(1, _PEEK)
        except BlockingIOError:  # spurious wake-up: keep watching
            return
        except OSError:  # reset by the peer
            data = b""
        greenlet = self._greenlet
        self.cancel()
        if not data and greenlet is not None:
            greenlet.kill(ClientGone, block=False)

    def cancel(self):
        io, self._io = self._io, None
        if io is not None:
            io.stop()
            io.close()
        self._sock = self._greenlet = None


def watch(environ):
    """Start watching this request's client; returns a guard with ``cancel()``."""
    sock = environ.get(CLIENT_SOCKET)
    if sock is None:  # not served by our server (WebTest): nothing to watch
        return _Guard()
    return _Guard(getattr(sock, "_sock", sock), gevent.getcurrent())
