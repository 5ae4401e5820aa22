"""geproxy.http11: strict HTTP/1.1 message heads (RFC 9112), for both directions.

Pure functions on text, no I/O: the connection handler and the upstream client
find the end of a head in their buffers, decode it as latin-1 (one byte, one
character, so nothing is lost) and call ``parse_request`` or
``parse_response`` here.  Whatever these accept is forwarded, so they refuse
what a lenient parser would let through and an attacker could use: obs-fold,
whitespace before the colon, a bare CR, LF or NUL in a value, a header line
without a colon, a target without a leading slash, a Content-Length that is
not plain digits or differs between repeats, both Content-Length and
Transfer-Encoding, a transfer coding other than ``chunked``.  Every field line
is checked by one regular expression over the whole block (one pass in C), so
the per-request cost stays a few microseconds; ``HeadMemo`` spares even that for a
head seen before.

The rules agree with llhttp (Node.js, uvicorn's httptools) on every head the
differential test in ``tests/test_http11_llhttp.py`` generates, except where
that test lists a deliberate difference (Go's net/http behaviour, which this
proxy replaces: any token as a method, identical repeated Content-Length).
"""

import re
from urllib.parse import unquote_to_bytes

from geproxy.errors import (BadRequest, BadResponse, ExpectationFailed, MethodNotAllowed,
                            NotImplementedFraming, TargetTooLong, VersionNotSupported)

MAX_HEAD = 1 << 20  # bytes of request line plus headers (Go's DefaultMaxHeaderBytes)
MAX_TARGET = 64 << 10  # a longer request line gets 414
MAX_CHUNK_SIZE_DIGITS = 15  # hex digits of one chunk size; more cannot fit any body we take

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_FIELD_LINE = r"[%s]+:[\t\x20-\x7e\x80-\xff]*" % _TCHAR
# A whole header block, each line ending in CRLF: a value can hold no CR, LF,
# NUL or other control byte but HTAB, and a line can start with nothing but a
# token, so obs-fold, "Name : v" and injected lines cannot match.
FIELD_LINES = re.compile(r"(?:%s\r\n)*" % _FIELD_LINE)
_REQUEST_LINE = re.compile(r"([%s]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)" % _TCHAR)
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([1-9]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?")
_DIGITS = re.compile(r"\d+")
_VERSION = re.compile(r"HTTP/\d\.\d")
_TOKEN = re.compile("[%s]+" % _TCHAR)
# absolute-form: scheme, "://", authority characters, then a path or query (llhttp's rules)
_ABSOLUTE = re.compile(r"[A-Za-z]+://[A-Za-z0-9!$%&'()*+,\-.:;=@\[\]_~]*(?:[/?][\x21-\x7e]*)?")
_CHUNK_SIZE = re.compile(r"([0-9A-Fa-f]{1,%d})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?"
                         % MAX_CHUNK_SIZE_DIGITS)

# header name -> (lower-case name, environ key); clients send few distinct
# names, so each is converted once, not once per request
_NAMES = {}
_NAMES_MAX = 4096


def header_name(name):
    """(lower-case name, WSGI environ key) for a header name, cached."""
    names = _NAMES.get(name)
    if names is None:
        names = (name.lower(), "HTTP_" + name.upper().replace("-", "_"))
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = names
    return names


def unquote(path):
    """A percent-encoded path as WSGI wants it: each decoded byte one latin-1 character."""
    return unquote_to_bytes(path).decode("latin-1")


def split_fields(block):
    """[(name, value)] from a validated field block ('' or lines ending in CRLF)."""
    out = []
    for line in block.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            out.append((name, value.strip(" \t")))
    return out


def comma_tokens(value):
    """The lower-cased items of a comma-separated field value (Connection), OWS stripped."""
    return [t.strip(" \t").lower() for t in value.split(",")]


class Request:
    """A parsed request head: what the handler builds the WSGI environ from.

    ``target`` is the request target exactly as sent; ``headers`` keeps every
    field line in order with repeats apart; ``length`` is the Content-Length
    (None when absent), ``chunked`` a chunked body; ``close`` whether the
    client wants the connection closed after this exchange; ``expect`` a
    ``100-continue`` request.
    """

    __slots__ = ("method", "target", "version", "headers", "length", "chunked", "close",
                 "expect")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.length = None
        self.chunked = False
        self.close = False
        self.expect = False


class HeadMemo:
    """The parses of recent heads, by their bytes: a head seen again is not parsed again.

    Why: a client asks the same thing again and again (a poller's GET, a
    load generator), and a member's answers to it repeat byte for byte until
    the data or the second in its Date changes.  A strict parse costs about
    4 µs a head (a GET with nothing but Host, or etcd's answer to it) and the
    lookup a tenth of that.  Under load it saved more than that suggests: in
    one run of alternating rounds the proxy's CPU per GET went from 85 to 59
    µs and its req/s up by a quarter (bench/README.md "Parsing a head once").

    Parsed heads are shared from then on, so nobody changes one after
    ``parse``.  A head that fails to parse raises every time and is not
    kept; at most ``size`` heads of up to ``longest`` bytes are kept, the
    oldest dropped first.
    """

    __slots__ = ("parse", "size", "longest", "heads")

    def __init__(self, parse, size=256, longest=1024):
        self.parse = parse  # bytes -> parsed head
        self.size = size
        self.longest = longest
        self.heads = {}

    def __call__(self, head):
        heads = self.heads
        parsed = heads.get(head)
        if parsed is None:
            parsed = self.parse(head)
            if len(head) <= self.longest:
                if len(heads) >= self.size:
                    del heads[next(iter(heads))]
                heads[head] = parsed
        return parsed


def parse_request(head):
    """A strict parse of one request head (text up to, not including, the blank line).

    Raises BadRequest (or one of its kinds, each with its status) for
    anything this proxy must not forward.
    """
    end = head.find("\r\n")
    line, block = (head, "") if end < 0 else (head[:end], head[end + 2:] + "\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None or len(line) > MAX_TARGET:
        raise _bad_request_line(line)
    method, target, major, minor = match.groups()
    if major != "1" or minor not in "01":
        raise VersionNotSupported("HTTP/%s.%s is not supported" % (major, minor))
    if method == "CONNECT":
        raise MethodNotAllowed("CONNECT is not supported: this proxy opens no tunnels")
    if target[0] != "/":
        if target == "*":
            if method != "OPTIONS":
                raise BadRequest("'*' is only a target for OPTIONS")
        elif _ABSOLUTE.fullmatch(target) is None:
            raise BadRequest("request target must start with '/' or be an absolute URL")
    if block and FIELD_LINES.fullmatch(block) is None:
        raise BadRequest(_field_problem(block))
    req = Request(method, target, "HTTP/1." + minor, split_fields(block))
    _framing(req, head[end:].lower() if end >= 0 else "")
    return req


def _bad_request_line(line):
    """The error for a request line that does not match the grammar."""
    if len(line) > MAX_TARGET:
        return TargetTooLong("request line longer than %d bytes" % MAX_TARGET)
    parts = line.split(" ")
    if len(parts) == 2 and parts[1].startswith("/"):
        return BadRequest("HTTP/0.9 requests are not supported")
    if len(parts) == 3 and parts[2].startswith("HTTP/") and not _VERSION.fullmatch(parts[2]):
        return BadRequest("malformed HTTP version %r" % parts[2][:16])
    return BadRequest("malformed request line")


def _field_problem(block):
    """Which line of an invalid field block is wrong, for the 400's text."""
    for line in block.split("\r\n")[:-1]:
        if FIELD_LINES.fullmatch(line + "\r\n") is None:
            if not line or line[0] in " \t":
                return "obsolete line folding is not allowed"
            name, sep, value = line.partition(":")
            if not sep:
                return "header line without a colon"
            if _TOKEN.fullmatch(name) is None:
                return "invalid header name %r" % name[:40]
            return "invalid character in the value of header %r" % name[:40]
    return "invalid header block (bare CR or LF)"


def names_regex(names):
    """A pattern finding the fields named in ``names`` (lower case) in a lowered block
    that starts with CRLF: findall gives (name, raw value) pairs, in order."""
    alternatives = "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))
    return re.compile(r"\r\n(%s):([^\r]*)" % alternatives)


_REQUEST_FRAMING = names_regex(("host", "content-length", "transfer-encoding", "connection",
                                "expect"))


def framing_fields(pattern, lowered):
    """The framing fields a ``names_regex`` pattern finds in a lowered header block:
    (Content-Length values, Transfer-Encoding values, Connection tokens, [(name,
    value) of any other name found]), values OWS-stripped (and lower case: every
    check on them ignores case).  Requests and responses share this one pass."""
    lengths, codings, connection, other = [], [], [], []
    for name, value in pattern.findall(lowered):
        value = value.strip(" \t")
        if name == "content-length":
            lengths.append(value)
        elif name == "transfer-encoding":
            codings.append(value)
        elif name == "connection":
            connection += comma_tokens(value)
        else:
            other.append((name, value))
    return lengths, codings, connection, other


def _framing(req, lowered):
    """Content-Length, Transfer-Encoding, Host, Connection and Expect, as Go's server checks them.

    ``lowered`` is the header block in lower case, starting with CRLF: one
    regular-expression pass finds just these fields (all compared without
    regard to case), so a GET with nothing but Host costs next to nothing.
    """
    lengths, codings, connection, other = framing_fields(_REQUEST_FRAMING, lowered)
    hosts = 0
    for name, value in other:
        if name == "host":
            hosts += 1
        elif value:  # expect
            if value != "100-continue":
                raise ExpectationFailed("unsupported expectation %r" % value[:40])
            req.expect = req.version == "HTTP/1.1"
    if hosts != 1 and req.version == "HTTP/1.1":
        raise BadRequest("missing required Host header" if not hosts else "too many Host headers")
    if hosts > 1:
        raise BadRequest("too many Host headers")
    # HTTP/1.0 closes unless the client asked to keep the connection alive
    req.close = "close" in connection or (
        req.version == "HTTP/1.0" and "keep-alive" not in connection)
    if codings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding given")
        if len(codings) != 1 or codings[0] != "chunked":
            raise NotImplementedFraming("unsupported Transfer-Encoding %r" % ", ".join(codings)[:60])
        req.chunked = True
    elif lengths:
        req.length = content_length(lengths, BadRequest)


def content_length(values, error):
    """One Content-Length from its field values: plain digits, repeats identical."""
    first = values[0]
    if _DIGITS.fullmatch(first) is None or len(first) > 19 or int(first) >= 1 << 63:
        raise error("invalid Content-Length %r" % first[:40])
    for other in values[1:]:
        if other != first:
            raise error("differing Content-Length values %r and %r" % (first[:20], other[:20]))
    return int(first)


def chunk_size(line):
    """The size from a chunk-size line (without its CRLF); extensions are ignored."""
    match = _CHUNK_SIZE.fullmatch(line)
    if match is None:
        raise BadRequest("invalid chunk size line %r" % line[:40])
    return int(match.group(1), 16)


class Response:
    """A parsed member response head: status, headers, body framing.

    ``status_text`` is the status line after the version ("200 OK"), as
    WSGI's start_response wants it; ``fields`` the header block as received
    (lines joined by CRLF); ``headers`` the (name, value) list, split from it
    only when asked for: a relayed answer never needs it.  ``flagged`` is True
    when a header named in the ``flag`` set given to ``parse_response`` (or
    Connection) was seen.
    """

    __slots__ = ("status", "status_text", "fields", "_headers", "length", "chunked", "close",
                 "flagged")

    def __init__(self, status, status_text, fields):
        self.status = status
        self.status_text = status_text
        self.fields = fields
        self._headers = None
        self.length = None
        self.chunked = False
        self.close = False
        self.flagged = False

    @property
    def reason(self):
        return self.status_text[4:]

    @property
    def headers(self):
        headers = self._headers
        if headers is None:
            headers = self._headers = split_fields(self.fields + "\r\n" if self.fields else "")
        return headers


_RESPONSE_FRAMING = {}  # a flag set -> the pattern for it plus the framing fields


def _response_framing(flag):
    pattern = _RESPONSE_FRAMING.get(flag)
    if pattern is None:
        pattern = _RESPONSE_FRAMING[flag] = names_regex(
            set(flag) | {"content-length", "transfer-encoding", "connection"})
    return pattern


def parse_response(head, flag=frozenset()):
    """A strict parse of a member's response head; BadResponse if it breaks HTTP/1.1.

    ``flag`` is a frozenset of lower-case names: ``flagged`` tells whether
    any of them (or Connection) is among the headers.
    """
    end = head.find("\r\n")
    line, block = (head, "") if end < 0 else (head[:end], head[end + 2:] + "\r\n")
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise BadResponse("malformed status line %r" % line[:60])
    if block and FIELD_LINES.fullmatch(block) is None:
        raise BadResponse("malformed response headers")
    minor, status = match.group(1), match.group(2)
    resp = Response(int(status), line[9:] if len(line) > 12 else status + " ", block[:-2])
    if end >= 0:
        lengths, codings, connection, other = framing_fields(_response_framing(flag),
                                                             head[end:].lower())
        # every name found is in ``flag`` or framing; Connection always counts
        resp.flagged = bool(other or connection
                            or codings and "transfer-encoding" in flag
                            or lengths and "content-length" in flag)
    else:
        lengths = codings = connection = ()
    resp.close = "close" in connection or (minor == "0" and "keep-alive" not in connection)
    if codings:
        if len(codings) != 1 or codings[0] != "chunked":
            raise BadResponse("unsupported Transfer-Encoding %r" % ", ".join(codings)[:60])
        resp.chunked = True  # wins over a Content-Length (RFC 9112 6.3), which is dropped
    elif lengths:
        resp.length = content_length(lengths, BadResponse)
    return resp
