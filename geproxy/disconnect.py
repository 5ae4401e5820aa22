"""geproxy.disconnect: notice a client that leaves while its watch waits upstream.

pywsgi does not read the client socket while the application runs, so a client
that hangs up during a long-poll goes unnoticed until the next write; the
upstream request and the member's watcher would live on until the key changes.
A small greenlet waits for the client socket to become readable: readable with
no data means the client closed, and the request greenlet is interrupted with
``ClientGone`` (a GreenletExit, so gevent logs no traceback), which closes the
upstream response in the app's ``finally``.  Readable *with* data is a
pipelined next request: not a disconnect, so the guard just stops watching.
"""

import socket

import gevent
from gevent.socket import wait_read

CLIENT_SOCKET = "geproxy.client_socket"


class ClientGone(gevent.GreenletExit):
    """The client closed its connection while its request was being served."""


class _Guard:
    __slots__ = ("_greenlet",)

    def __init__(self, greenlet):
        self._greenlet = greenlet

    def cancel(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None


def _wait_for_close(sock, request_greenlet):
    try:
        wait_read(sock.fileno())
        data = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        data = b""
    if not data:
        request_greenlet.kill(ClientGone, block=False)


def watch(environ):
    """Start watching this request's client; returns a guard with ``cancel()``."""
    sock = environ.get(CLIENT_SOCKET)
    if sock is None:  # not served by our server (WebTest): nothing to watch
        return _Guard(None)
    return _Guard(gevent.spawn(_wait_for_close, sock, gevent.getcurrent()))
