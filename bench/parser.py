"""What parsing one message head costs: our strict parser (``geproxy.http11``) against
llhttp (through httptools, uvicorn's binding), on the heads this proxy sees.

Why: issue 9 left the parser open, httptools or a hand-written one, whichever
measures faster.  Both sides here produce what the handler and the member
client need from a head: the method, target and version (or the status),
every field line, and the body's framing.  For httptools that means its
callbacks (``on_url``, ``on_header``), which are
Python calls per field; the parser object is reused across heads, as one
connection would.  ``ours, memo hit`` is the ``HeadMemo`` lookup that
replaces the parse for a head seen before (the handler and the client keep
256 each).

    .venv/bin/python bench/parser.py             # a table of µs per head
    .venv/bin/python bench/parser.py --repeat 9  # more timing runs (the best is shown)
"""

import argparse
import re
import sys
import timeit

import harness  # first of bench/'s modules: it makes geproxy importable
from tables import table

import httptools

from geproxy import http11
from geproxy.headers import HOP_BY_HOP

HOST = "Host: 127.0.0.1:2379\r\n"
REQUESTS = {
    "wrk GET (Host only)": "GET /v2/keys/bench/key HTTP/1.1\r\n" + HOST,
    "etcdctl GET (Go client)": (
        "GET /v2/keys/foo?quorum=false&recursive=false&sorted=false HTTP/1.1\r\n" + HOST
        + "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n"),
    "curl PUT with a form body": (
        "PUT /v2/keys/foo HTTP/1.1\r\n" + HOST + "User-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        "Content-Length: 7\r\nContent-Type: application/x-www-form-urlencoded\r\n"),
    "browser-like GET, 10 fields": (
        "GET /v2/keys/?recursive=true HTTP/1.1\r\n" + HOST
        + "Connection: keep-alive\r\nCache-Control: max-age=0\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
        "Origin: http://127.0.0.1:8080\r\nReferer: http://127.0.0.1:8080/\r\n"
        "Cookie: session=abcdef0123456789\r\n"),
}
RESPONSES = {
    "etcd's answer to a GET": (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        "X-Etcd-Cluster-Id: cdf818194e3a8c32\r\nX-Etcd-Index: 5\r\nX-Raft-Index: 10\r\n"
        "X-Raft-Term: 2\r\nDate: Mon, 30 Nov 2026 12:00:00 GMT\r\nContent-Length: 94\r\n"),
    "etcd's watch answer (chunked)": (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        "X-Etcd-Cluster-Id: cdf818194e3a8c32\r\nX-Etcd-Index: 5\r\nX-Raft-Index: 10\r\n"
        "X-Raft-Term: 2\r\nDate: Mon, 30 Nov 2026 12:00:00 GMT\r\nTransfer-Encoding: chunked\r\n"),
}


class Collect:
    """httptools' callbacks, keeping what our parser returns."""

    def __init__(self):
        self.url = None
        self.headers = []

    def on_url(self, url):
        self.url = url

    def on_status(self, status):
        self.url = status

    def on_header(self, name, value):
        self.headers.append((name, value))


def httptools_parse(parser_class, result):
    """A parse of one message over one reused httptools parser of ``parser_class``:
    what ``result(parser, collected)`` takes from it."""
    collect = Collect()
    parser = parser_class(collect)

    def parse(data):
        collect.headers = []
        parser.feed_data(data)
        return result(parser, collect)
    return parse


def httptools_request():
    return httptools_parse(httptools.HttpRequestParser, lambda parser, collect: (
        parser.get_method(), collect.url, parser.get_http_version(), collect.headers,
        parser.should_keep_alive()))


def httptools_as_ours():
    """httptools, then what our handler would still need from its output: the same
    ``http11.Request`` (str fields, framing decided), and the checks Go's net/http
    makes that llhttp does not (the request line's single spaces and length,
    version, CONNECT, the target's form, one Host, Expect, Transfer-Encoding).
    The accepting path of an llhttp-based parser of this proxy; what llhttp
    refuses would go to ours for Go's answer, not timed here (no head in the
    table is refused).  A fresh parser per head: after a refused head llhttp's
    parser is unusable, and a head with a body leaves it expecting the body,
    which the handler reads itself."""

    def build(data):
        method, url, version, fields, keep_alive = httptools_request()(data)
        if not data.startswith(b"%s %s HTTP/%s\r\n" % (method, url, version.encode())) \
                or len(url) > http11.MAX_TARGET:
            raise ValueError("refused")  # more than one space, or a target too long (414)
        method, target = method.decode("latin-1"), url.decode("latin-1")
        if version not in ("1.1", "1.0") or method == "CONNECT":
            raise ValueError("refused")
        if target[0] != "/" and not (target == "*" and method == "OPTIONS"):
            raise ValueError("refused")  # (absolute-form left out: none in the table)
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields]
        req = http11.Request(method, target, "HTTP/" + version, headers)
        req.close = not keep_alive
        hosts = 0
        for name, value in headers:
            lowered = name.lower()
            if lowered == "host":
                hosts += 1
            elif lowered == "content-length":
                req.length = int(value)
            elif lowered == "transfer-encoding":
                if value.lower() != "chunked" or req.length is not None:
                    raise ValueError("refused")
                req.chunked = True
            elif lowered == "expect":
                if value.lower() != "100-continue":
                    raise ValueError("refused")
                req.expect = True
        if hosts != 1 and version == "1.1":
            raise ValueError("refused")
        return req
    return build


def httptools_response():
    return httptools_parse(httptools.HttpResponseParser, lambda parser, collect: (
        parser.get_status_code(), collect.headers, parser.should_keep_alive()))


def per_call(fn, arg, number, repeat):
    """µs per ``fn(arg)``: the best of ``repeat`` timings of ``number`` calls (the
    timings above the best are this shared machine's other load, not the code)."""
    times = timeit.repeat(lambda: fn(arg), number=number, repeat=repeat)
    return min(times) / number * 1e6


def rows(number, repeat):
    out = []
    request_memo = http11.HeadMemo(lambda head: http11.parse_request(head.decode("latin-1")))
    response_memo = http11.HeadMemo(
        lambda head: http11.parse_response(head.decode("latin-1"), HOP_BY_HOP))
    for kind, heads, ours, memo, theirs, theirs_built in (
            ("request", REQUESTS, lambda head: http11.parse_request(head.decode("latin-1")),
             request_memo, httptools_request(), httptools_as_ours()),
            ("response", RESPONSES,
             lambda head: http11.parse_response(head.decode("latin-1"), HOP_BY_HOP),
             response_memo, httptools_response(), None)):
        for name, text in heads.items():
            wire = text.encode("latin-1") + b"\r\n"  # what llhttp reads: up to the blank line
            head = wire[:-4]  # what our handler and client hand the parser: up to the last field
            # and the body, so that the reused parser is at the next message's start
            length = re.search(r"Content-Length: (\d+)", text)
            wire += b"0\r\n\r\n" if "chunked" in text else b"x" * int(length.group(1)) \
                if length else b""
            memo(head)  # seen once: every later call is a hit
            ours_us = per_call(ours, head, number, repeat)
            memo_us = per_call(memo, head, number, repeat)
            llhttp_us = per_call(theirs, wire, number, repeat)
            built_us = per_call(theirs_built, wire, number, repeat) if theirs_built else None
            out.append([kind, name, len(wire), text.count("\r\n") - 1, "%.2f" % ours_us,
                        "%.2f" % memo_us, "%.2f" % llhttp_us,
                        "%.2f" % built_us if built_us else "",
                        "%.2f" % (ours_us / (built_us or llhttp_us))])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20000, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=5, help="timings per cell (the best is shown)")
    args = ap.parse_args(argv)
    harness.stop_on_sigterm()
    print("µs per head, best of %d timings of %d calls; Python %s, httptools %s"
          % (args.repeat, args.number, sys.version.split()[0], httptools.__version__))
    print(table(["head", "example", "bytes", "fields", "ours µs", "ours, memo hit µs",
                 "httptools (llhttp) µs", "httptools + our Request and checks µs",
                 "ours / httptools"],
                rows(args.number, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
