"""Differential test: our request-head parser against llhttp (through httptools).

llhttp is the strict parser Node.js and uvicorn rely on against request
smuggling.  Thousands of generated and mutated heads go to both; they must
make the same accept/reject decision and, when both accept, read the same
method, target, version and headers (values without their trailing
whitespace, which RFC 9110 says is not part of a value; llhttp keeps it).

Where this proxy deliberately decides otherwise, the test names the rule and
checks our decision instead (each rule is what Go's net/http does, the
server this proxy replaces):

* any token is a method (llhttp knows a fixed list): ``FOO`` is forwarded;
* identical repeated Content-Length values are one length (llhttp refuses any repeat);
* HTTP/1.1 requires a Host, and no request has two (llhttp does not look);
* only HTTP/1.0 and 1.1 are served: 0.9 (a line without a version), 1.2+ and 2.0 get 400/505;
* ``*`` is a target for OPTIONS only, and CONNECT is refused (no tunnels);
* the request line has single spaces (llhttp allows more);
* only ``chunked`` as the one transfer coding (llhttp allows e.g. ``gzip, chunked``);
* an Expect other than ``100-continue`` gets 417;
* a Content-Length must fit 63 bits (llhttp allows 64).
"""

import os

import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geproxy import http11
from geproxy.errors import BadRequest

# The default run is the same every time (CI); GEPROXY_FUZZ_EXAMPLES=50000 runs longer,
# with fresh random inputs each time.
LONG = "GEPROXY_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("GEPROXY_FUZZ_EXAMPLES", "3000"))
LLHTTP_METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "PURGE")
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAMES = ("Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "X-Etcd",
         "Authorization", "content-length", "transfer-encoding", "HOST")


class _Capture:
    def __init__(self):
        self.url = b""
        self.headers = []
        self.complete = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.complete = True


def llhttp(head):
    """(method, target, version, headers) as llhttp reads ``head``, or None if it refuses it."""
    capture = _Capture()
    parser = httptools.HttpRequestParser(capture)
    try:
        parser.feed_data(head + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    if not capture.complete:
        return None
    return (parser.get_method().decode("latin-1"), capture.url.decode("latin-1"),
            "HTTP/" + parser.get_http_version(),
            [(n.decode("latin-1"), v.decode("latin-1").rstrip(" \t"))
             for n, v in capture.headers])


def ours(head):
    """The same for our parser, as the handler calls it (leading empty lines dropped)."""
    text = head.decode("latin-1").lstrip("\r\n")
    try:
        req = http11.parse_request(text)
    except BadRequest:
        return None
    return req.method, req.target, req.version, req.headers


def _fields(head):
    lines = head.split(b"\r\n")[1:]
    return [line.partition(b":") for line in lines]


def deliberate(head):
    """Our decision for ``head`` when a rule above applies (True = accept), else None."""
    text = head.decode("latin-1").lstrip("\r\n")
    line = text.split("\r\n", 1)[0]
    parts = line.split(" ")
    if len(parts) != 3:  # HTTP/0.9's "GET /", or more than single spaces
        return False
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return False if version.startswith("HTTP/") else None
    if method == "CONNECT" or (target == "*" and method != "OPTIONS"):
        return False
    if method and all(c in TOKEN for c in method) and method not in LLHTTP_METHODS:
        return ours(head.replace(method.encode(), b"GET", 1)) is not None
    fields = [(n.strip().lower(), v.strip(b" \t")) for n, _, v in _fields(head)]
    hosts = sum(1 for n, _ in fields if n == b"host")
    if hosts > 1 or (version == "HTTP/1.1" and not hosts):
        return False
    lengths = [v for n, v in fields if n == b"content-length"]
    if len(lengths) > 1 or any(v.isdigit() and int(v) >= 1 << 63 for v in lengths):
        return None if len(set(lengths)) > 1 else ours(head) is not None
    codings = [v.lower() for n, v in fields if n == b"transfer-encoding"]
    if codings and codings != [b"chunked"]:
        return False
    if any(n == b"expect" and v and v.lower() != b"100-continue" for n, v in fields):
        return False
    return None


# --- generators ----------------------------------------------------------------------

_value_chars = st.sampled_from(
    [b"a", b"Z", b"0", b" ", b"\t", b",", b";", b"=", b"/", b"\x80", b"\xff", b"\x7f", b"\x00",
     b"\r", b"\n", b"\x01", b"\x1f", b"chunked", b"close", b"keep-alive", b"100-continue",
     b"5", b"12", b"+", b"-", b":"])
_name = st.one_of(st.sampled_from(NAMES).map(str.encode),
                  st.text(TOKEN, min_size=1, max_size=8).map(str.encode),
                  st.text(TOKEN + " :\t\x00\x7f(", min_size=0, max_size=8).map(
                      lambda t: t.encode("latin-1")))
_value = st.lists(_value_chars, max_size=6).map(b"".join)
_separator = st.sampled_from([b": ", b":", b": ", b" : ", b":\t", b"::"])
_field = st.tuples(_name, _separator, _value).map(b"".join)
_method = st.one_of(st.sampled_from(LLHTTP_METHODS),
                    st.sampled_from(("FOO", "get", "CONNECT", "G T", "GE\x00T", "M-SEARCH")))
_target = st.one_of(
    st.sampled_from(["/", "/v2/keys/a", "/v2/keys/a?wait=true&x=%2F", "*", "v2/keys",
                     "http://h:1/v2/keys/a?x=1", "http://h", "/a#b", "/\x7f", "/a b", "/\xe9",
                     "/%zz", "a:1"]),
    st.text("/abcXYZ0123456789-._~%!$&'()*+,;=:@?", min_size=1, max_size=12).map(
        lambda t: "/" + t))
_version = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1", "HTTP/2.0",
                            "HTTP/0.9", "HTTP/1.2", "http/1.1", "HTTP/1.1 ", "HTTP/11"])


@st.composite
def wild_heads(draw):
    """Any combination of good and bad parts."""
    method, target, version = draw(_method), draw(_target), draw(_version)
    line = ("%s%s%s%s%s" % (method, draw(st.sampled_from([" ", " ", "  "])), target,
                            draw(st.sampled_from([" ", " ", "  "])), version)).encode("latin-1")
    fields = draw(st.lists(_field, max_size=6))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), b"Host: example")
    return b"\r\n".join([line] + fields)


_good_value = st.text(" \tabcXYZ019,;=/-_.:()\xe9\xff", max_size=12).map(
    lambda t: t.strip(" \t").encode("latin-1"))
_good_field = st.tuples(st.one_of(st.sampled_from(("X-Etcd", "Authorization", "Accept",
                                                   "User-Agent", "Content-Type")),
                                  st.text(TOKEN, min_size=1, max_size=10)).map(str.encode),
                        st.sampled_from([b": ", b":", b":  "]), _good_value).map(b"".join)
_framing_field = st.sampled_from([b"Content-Length: 7", b"Content-Length: 0",
                                  b"Transfer-Encoding: chunked", b"Connection: close",
                                  b"Connection: keep-alive", b"Expect: 100-continue",
                                  b"Content-Length:  12 ", b"content-length: 3"])


@st.composite
def valid_heads(draw):
    """A head both parsers accept, before mutations."""
    line = ("%s %s %s" % (draw(st.sampled_from(LLHTTP_METHODS)), draw(st.sampled_from(
        ["/", "/v2/keys/a", "/v2/keys/a?wait=true&x=%2F", "/a#b", "http://h:1/v2/keys/a?x=1"])),
        draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"])))).encode()
    fields = draw(st.lists(_good_field, max_size=5))
    if draw(st.booleans()):
        fields.append(draw(_framing_field))
    fields.insert(draw(st.integers(0, len(fields))), b"Host: example:2379")
    return b"\r\n".join([line] + fields)


_MUTATIONS = ("flip", "insert", "delete", "duplicate line", "drop line", "fold")
_INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"\x7f", b"\x80", b",", b"a"]


@st.composite
def mutated_heads(draw):
    """A valid head with zero to two mutations a hostile or broken client would make."""
    head = draw(valid_heads())
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(_MUTATIONS))
        pos = draw(st.integers(0, len(head) - 1))
        lines = head.split(b"\r\n")
        if kind == "flip":
            head = head[:pos] + bytes([head[pos] ^ (1 << draw(st.integers(0, 7)))]) + \
                head[pos + 1:]
        elif kind == "insert":
            head = head[:pos] + draw(st.sampled_from(_INSERTS)) + head[pos:]
        elif kind == "delete":
            head = head[:pos] + head[pos + 1:]
        elif kind == "duplicate line" and len(lines) > 1:
            k = draw(st.integers(1, len(lines) - 1))
            head = b"\r\n".join(lines[:k + 1] + [lines[k]] + lines[k + 1:])
        elif kind == "drop line" and len(lines) > 1:
            k = draw(st.integers(1, len(lines) - 1))
            head = b"\r\n".join(lines[:k] + lines[k + 1:])
        elif kind == "fold" and len(lines) > 1:
            k = draw(st.integers(1, len(lines) - 1))
            head = b"\r\n".join(lines[:k + 1] + [b" folded"] + lines[k + 1:])
    if draw(st.integers(0, 19)) == 0:
        head = b"\r\n" + head
    return head


def heads():
    return st.one_of(mutated_heads(), mutated_heads(), mutated_heads(), wild_heads())


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
          suppress_health_check=list(HealthCheck))
@given(heads())
def test_same_decision_and_reading_as_llhttp(head):
    assume(b"\r\n\r\n" not in head + b"\r\n")  # one head, as the handler cuts it
    assume(not head.endswith(b"\r"))
    rule = deliberate(head)
    mine = ours(head)
    if rule is not None:
        assert (mine is not None) == rule, (head, mine)
        return
    theirs = llhttp(head)
    assert (mine is None) == (theirs is None), (head, mine, theirs)
    if mine is not None:
        assert mine == theirs, head


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: x",
    b"PUT /v2/keys/a?x=%2F HTTP/1.1\r\nHost: x\r\nContent-Length: 5 \r\nX-E:",
    b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-A: \xe9t\xe9",
    b"GET http://h:1/v2/keys/a?x=1 HTTP/1.1\r\nHost: h:1",
    b"OPTIONS * HTTP/1.1\r\nHost: x",
])
def test_agreed_readings(head):
    assert ours(head) == llhttp(head) is not None or ours(head) == llhttp(head)
    assert ours(head) is not None


def test_unknown_token_methods_are_forwarded_as_go_does():
    assert ours(b"FOO /v2/keys/a HTTP/1.1\r\nHost: x")[0] == "FOO"
    assert llhttp(b"FOO /v2/keys/a HTTP/1.1\r\nHost: x") is None
