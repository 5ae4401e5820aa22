"""geproxy.cors: CORS as etcd 3.4's proxy does it, without its duplicate headers.

With ``--cors *`` (the default) every answer behind the readonly gate gets

    Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE
    Access-Control-Allow-Origin: *
    Access-Control-Allow-Headers: accept, content-type, authorization

(errors, 405s and the local config endpoint included; /metrics and readonly
501s are answered before this and get none).  With a list of origins the same
three, ``Access-Control-Allow-Origin`` naming the request's ``Origin``, only
when that origin is on the list.  ``OPTIONS`` on any path is answered here with
200 and an empty body, never forwarded, allowed origin or not.

Better than the Go proxy: it adds its three headers to a member's answer that
already carries them (etcd 3.4 members add them by default), so browsers see
each twice, or two different origins, which they reject.  Here a header the
member's answer already has is not added again.  For a member header block
relayed as bytes (``headers.RELAY``) that is one prefix comparison when the
member sends etcd's own three lines, else one lower-casing and a few searches.

The app answers preflights (``Cors.preflight``) and leaves the request's
``Answer`` in the environ (``CORS``); it adds it where it writes a head, so no
request pays for wrapping start_response.
"""

CORS = "geproxy.cors"  # environ key: the Answer for this request (absent: no CORS headers)

ALLOW_METHODS = "POST, GET, OPTIONS, PUT, DELETE"
ALLOW_HEADERS = "accept, content-type, authorization"
_PREFIX = "access-control-allow-"


def _fields(origin):
    return [("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS)]


class Answer:
    """The three headers for one allowed origin, as a header list and as raw lines."""

    __slots__ = ("fields", "lines", "block", "canonical")

    def __init__(self, origin):
        self.fields = _fields(origin)
        # (lower-cased "name:" to look for, "Name: value" line), for raw header blocks
        self.lines = [(("%s:" % name.lower()).encode("latin-1"),
                       ("%s: %s" % (name, value)).encode("latin-1"))
                      for name, value in self.fields]
        self.block = b"\r\n".join(line for _, line in self.lines)
        # what an etcd member with the default --cors sends first: these three lines,
        # in the order Go writes header names (sorted)
        self.canonical = b"\r\n".join(sorted(line for _, line in self.lines))

    def add_fields(self, headers):
        """``headers`` plus those of the three it lacks (case-insensitive), as a new list."""
        have = [name.lower() for name, _ in headers if name[:21].lower() == _PREFIX]
        if not have:
            return headers + self.fields
        return headers + [pair for pair in self.fields if pair[0].lower() not in have]

    def add_block(self, raw):
        """A relayed header block (``Name: value`` lines joined by CRLF) with the three
        added in front, each only if the block does not carry it already."""
        if raw.startswith(self.canonical):
            return raw  # the member sent the same three (etcd's default)
        low = raw.lower()
        if b"access-control-allow-" not in low:
            return self.block + b"\r\n" + raw if raw else self.block
        missing = [line for name, line in self.lines
                   if not low.startswith(name) and b"\n" + name not in low]
        if not missing:
            return raw
        return b"\r\n".join(missing) + b"\r\n" + raw


class Cors:
    """The allowed origins; the app asks ``answer(environ)`` (or takes ``everyone``
    when ``any``), answers preflights with ``preflight`` and leaves the Answer in
    the environ (``CORS``) for ``start`` and the relay path to add.

    ``origins`` as parsed from --cors (``values.parse_cors``): ``("*",)`` or
    an empty tuple allows every origin, as etcd.
    """

    def __init__(self, origins):
        origins = tuple(origins)
        self.any = not origins or "*" in origins
        self.everyone = Answer("*") if self.any else None
        self.by_origin = {} if self.any else {o: Answer(o) for o in origins}

    def answer(self, environ):
        """The Answer for this request, or None when its origin is not allowed."""
        if self.any:
            return self.everyone
        origin = environ.get("HTTP_ORIGIN")
        return self.by_origin.get(origin) if origin else None

    def preflight(self, answer, start_response):
        """OPTIONS, answered here: 200, the headers for an allowed origin, no body."""
        start_response("200 OK", (answer.fields if answer else []) + [("Content-Length", "0")])
        return []


def start(environ, start_response, status, headers):
    """start_response with this request's CORS headers added (where it has them)."""
    answer = environ.get(CORS)
    if answer is not None:
        headers = answer.add_fields(headers)
    return start_response(status, headers)



