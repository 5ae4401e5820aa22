"""geproxy.headers: what crosses the proxy in each direction, and what stops at it.

Hop-by-hop headers describe one connection, not the message, so they are
dropped in both directions (RFC 9110 7.6.1): the fixed list below plus every
header named in ``Connection``.  The Go proxy drops only the fixed list; we also
drop the named ones.  ``X-Forwarded-For`` gets the client's address appended.
"""

from urllib.parse import quote

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))

# Request headers the proxy sets itself: the body is re-framed with its own
# Content-Length, Expect was already answered by the server, XFF is rebuilt.
_REQUEST_OWN = frozenset(("content-length", "expect", "x-forwarded-for"))


_REQUEST_DROP = HOP_BY_HOP | _REQUEST_OWN

# environ key -> (header name, lower-case name); the set of names clients send
# is small, so the conversion is done once per name, not once per request.
_NAMES = {}
_NAMES_MAX = 4096


def _header_name(key):
    names = _NAMES.get(key)
    if names is None:
        name = key[5:].replace("_", "-").title()
        names = (name, name.lower())
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[key] = names
    return names


def _connection_tokens(value):
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def request_headers(environ):
    """Headers to send upstream, as a list of (name, value), from a WSGI environ."""
    drop = _REQUEST_DROP
    connection = environ.get("HTTP_CONNECTION")
    if connection:
        drop = drop | _connection_tokens(connection)
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name, lower = _header_name(key)
            if lower not in drop:
                out.append((name, value))
    content_type = environ.get("CONTENT_TYPE")
    if content_type and "content-type" not in drop:
        out.append(("Content-Type", content_type))
    client = environ.get("REMOTE_ADDR")
    prior = environ.get("HTTP_X_FORWARDED_FOR")
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
            drop = drop | _connection_tokens(value)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def request_target(environ):
    """The request target to forward, byte-exact, always in origin form.

    pywsgi percent-decodes PATH_INFO (so ``%2F`` would become ``/``); the server
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
