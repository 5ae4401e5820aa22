"""The geventhttpclient pool's reuse check: one peek says whether an idle connection is usable."""

import socket

from geproxy.upstream import _Pool


def check(sock):
    return _Pool.__new__(_Pool)._is_socket_alive(sock)


def test_idle_connection_is_reused():
    a, b = socket.socketpair()
    try:
        assert check(a) is True
    finally:
        a.close()
        b.close()


def test_connection_with_stray_bytes_is_dropped():
    a, b = socket.socketpair()
    try:
        b.sendall(b"x")
        assert check(a) is False
        assert a.recv(1) == b"x"  # a peek: nothing was consumed
    finally:
        a.close()
        b.close()


def test_connection_closed_by_the_member_is_dropped():
    a, b = socket.socketpair()
    b.close()
    try:
        assert check(a) is False
    finally:
        a.close()
