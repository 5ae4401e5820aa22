"""geproxy.headers: what crosses the proxy in each direction, and what stops at it.

Hop-by-hop headers describe one connection, not the message, so they are
dropped in both directions (RFC 9110 7.6.1): the fixed list below plus every
header named in ``Connection``.  The Go proxy drops only the fixed list; we also
drop the named ones.  ``X-Forwarded-For`` gets the client's address appended.
"""

from urllib.parse import quote

from geproxy.http11 import comma_tokens, header_name

RAW_HEADERS = "geproxy.headers"  # environ key: the request's (name, value) list as received
# environ key of a server extension (like wsgi.file_wrapper): relay(status, fields) sends a
# member's header block on unchanged instead of start_response(status, headers)
RELAY = "geproxy.relay"

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))

# Request headers the proxy sets itself: the body is re-framed with its own
# Content-Length, Expect was already answered by the handler, XFF is rebuilt.
_REQUEST_OWN = frozenset(("content-length", "expect", "x-forwarded-for"))
_REQUEST_DROP = HOP_BY_HOP | _REQUEST_OWN


def _from_environ(environ):
    """(name, value) pairs rebuilt from HTTP_* keys, for servers other than ours (WebTest)."""
    out = [(key[5:].replace("_", "-").title(), value)
           for key, value in environ.items() if key.startswith("HTTP_")]
    if environ.get("CONTENT_TYPE"):
        out.append(("Content-Type", environ["CONTENT_TYPE"]))
    return out


def request_headers(environ):
    """Headers to send upstream, as a list of (name, value), in the order received.

    Our handler puts the received list in the environ (``RAW_HEADERS``), so
    names keep their spelling and repeated headers stay apart; other servers
    get theirs rebuilt from the CGI keys.
    """
    raw = environ.get(RAW_HEADERS)
    if raw is None:
        raw = _from_environ(environ)
    drop = _REQUEST_DROP
    connection = environ.get("HTTP_CONNECTION")
    if connection:
        drop = drop.union(comma_tokens(connection))
    out = []
    prior = None
    for name, value in raw:
        lower = header_name(name)[0]
        if lower in drop:
            if lower == "x-forwarded-for":
                prior = value if prior is None else prior + ", " + value
            continue
        out.append((name, value))
    client = environ.get("REMOTE_ADDR")
    if client:
        out.append(("X-Forwarded-For", prior + ", " + client if prior else client))
    elif prior:
        out.append(("X-Forwarded-For", prior))
    return out


def response_headers(headers):
    """Member response headers minus hop-by-hop ones; repeated headers kept."""
    drop = HOP_BY_HOP
    for name, value in headers:
        if name.lower() == "connection":
            drop = drop.union(comma_tokens(value))
    return [(name, value) for name, value in headers if name.lower() not in drop]


def raft_term(headers):
    """The raft term a member's answer names (``X-Raft-Term``: etcd sets it on a
    write it applied), or 0."""
    for name, value in headers:
        if len(name) == 11 and name.lower() == "x-raft-term":
            return int(value) if value.isdigit() else 0
    return 0


def request_target(environ):
    """The request target to forward, byte-exact, always in origin form.

    PATH_INFO is percent-decoded (so ``%2F`` would become ``/``); the handler
    keeps the raw target in RAW_URI.  An absolute-form target
    (``GET http://host/x``) is reduced to its path: the proxy forwards to a
    member, never to the host named in the request.
    """
    raw = environ.get("RAW_URI")
    if raw is None:  # not from our server (e.g. WebTest): rebuild from the parts
        raw = quote(environ.get("PATH_INFO", "") or "/", safe="/%;:@&=+$,!~*'()")
        if environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
    if not raw.startswith("/"):
        scheme_end = raw.find("://")
        if scheme_end > 0:
            slash = raw.find("/", scheme_end + 3)
            query = raw.find("?", scheme_end + 3)
            if slash < 0 or (0 <= query < slash):
                raw = "/" + raw[query:] if query >= 0 else "/"
            else:
                raw = raw[slash:]
        else:
            raw = "/" + raw
    return raw
