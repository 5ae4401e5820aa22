"""geproxy.listeners: the listening sockets, made once with the options a proxy needs.

* TCP_NODELAY on the listener (Linux copies it to accepted sockets; the
  handler sets it again for listeners made elsewhere): a response written in
  more than one send would otherwise wait ~40 ms for a delayed ACK
  (gevent#1233).
* SO_REUSEADDR, a large backlog (bursts of new connections are queued by the
  kernel, not refused).
* ``unix://path`` listen URLs (etcd's ``unix://host:port`` too: a socket file
  of that name) are Unix sockets; ``http://[::1]:port`` is IPv6.
"""

import os
import socket
import stat
from urllib.parse import urlsplit

from geproxy.values import host_port

BACKLOG = 2048


def unix_path(url):
    """The socket path of a ``unix://path`` listen URL; None for http(s) URLs."""
    return url[len("unix://"):] if url.startswith("unix://") else None


def listen_address(url):
    """('host', port) from an http(s)://host:port listen URL; (path, None) for unix://path."""
    path = unix_path(url)
    if path is not None:
        return path, None
    parts = urlsplit(url)
    return parts.hostname, parts.port


def bound_url(url, address):
    """The listen URL as bound: the real port for port 0, IPv6 hosts in brackets."""
    if unix_path(url) is not None:
        return url
    return "%s://%s" % (urlsplit(url).scheme, host_port(*address[:2]))


def make_listener(host, port, backlog=BACKLOG):
    """A bound, listening TCP socket with SO_REUSEADDR and TCP_NODELAY; with port None a
    Unix socket at the path ``host`` (a socket file an earlier run left there is
    replaced, as etcd does; any other file there is an error)."""
    if port is None:
        if os.path.exists(host) and stat.S_ISSOCK(os.stat(host).st_mode):
            os.unlink(host)
        sock, addr, options = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), host, ()
    else:
        family, kind, proto, _name, addr = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        options = ((socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
                   (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    try:
        for option in options:
            sock.setsockopt(*option)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
