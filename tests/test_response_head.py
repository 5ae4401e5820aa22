"""A member's response head: which answers can be relayed as received.

``parse_response`` flags a head carrying any hop-by-hop field (or
Connection); only an unflagged head is relayed byte for byte, a flagged one
is rebuilt without those fields.  The framing fields are read in the same
pass, so each of them must still flag when it is in the set.
"""

import pytest

from geproxy import http11
from geproxy.errors import BadResponse
from geproxy.headers import HOP_BY_HOP


@pytest.mark.parametrize("fields, flagged", [
    ("Content-Length: 3", False),
    ("X-Etcd-Index: 8\r\nContent-Length: 3", False),
    ("Transfer-Encoding: chunked", True),
    ("Keep-Alive: timeout=5\r\nContent-Length: 3", True),
    ("Connection: keep-alive\r\nContent-Length: 3", True),
    ("Upgrade: h2c\r\nContent-Length: 3", True),
])
def test_hop_by_hop_fields_flag_the_head(fields, flagged):
    head = http11.parse_response("HTTP/1.1 200 OK\r\n" + fields, HOP_BY_HOP)
    assert head.flagged is flagged


@pytest.mark.parametrize("fields, length, chunked, close", [
    ("Content-Length: 3", 3, False, False),
    ("Content-Length: 3\r\ncontent-length: 3", 3, False, False),
    ("Transfer-Encoding: chunked\r\nContent-Length: 3", None, True, False),
    ("Connection: close\r\nContent-Length: 0", 0, False, True),
])
def test_framing(fields, length, chunked, close):
    head = http11.parse_response("HTTP/1.1 200 OK\r\n" + fields, HOP_BY_HOP)
    assert (head.length, head.chunked, head.close) == (length, chunked, close)


def test_http10_closes_unless_kept_alive():
    assert http11.parse_response("HTTP/1.0 200 OK").close
    assert not http11.parse_response("HTTP/1.0 200 OK\r\nConnection: keep-alive").close


@pytest.mark.parametrize("fields", [
    "Content-Length: 3\r\nContent-Length: 4",
    "Content-Length: +3",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
])
def test_bad_framing_is_refused(fields):
    with pytest.raises(BadResponse):
        http11.parse_response("HTTP/1.1 200 OK\r\n" + fields, HOP_BY_HOP)
