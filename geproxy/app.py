"""geproxy.app: the WSGI application that forwards etcd v2 requests to a member.

Order of decisions per request, as in the Go proxy:

1. readonly mode: anything but GET gets 501 with an empty body;
2. ``/v2/config/local/proxy`` is answered here;
3. everything else is forwarded: the body is read (bounded), the endpoints are
   tried in order, the member's answer is passed back unchanged.

Retry rule (better than Go, which replays writes): a connection that could not
be made moves on to the next endpoint for any method; once bytes may have
reached a member, only GET and HEAD go to another member and every other
method gets 502 instead of a possible second write.

Watches (``wait=true``) are streamed: the member's headers go to the client as
soon as they arrive and each chunk is flushed as it comes; a client that goes
away closes the upstream request (see ``disconnect``).
"""

import json
import logging

from geproxy import disconnect
from geproxy.headers import request_headers, request_target, response_headers
from geproxy.upstream import UpstreamError

log = logging.getLogger("geproxy.app")

CONFIG_PATH = "/v2/config/local/proxy"
RETRY_ELSEWHERE = frozenset(("GET", "HEAD"))
_TRUE = frozenset(("1", "t", "T", "true", "TRUE", "True"))


class BodyTooLarge(Exception):
    pass


def _json_error(start_response, status, message, close=False):
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    start_response(status, headers)
    return [body]


def is_watch(query):
    """True for etcd watch requests (``wait=true``, any ParseBool spelling)."""
    if "wait=" not in query:
        return False
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "wait" and value in _TRUE:
            return True
    return False


def read_body(environ, limit):
    """The whole request body (bounded by ``limit`` bytes), or BodyTooLarge."""
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        size = int(length)
        if size > limit:
            raise BodyTooLarge()
        return stream.read(size) if size else b""
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" or \
            environ.get("wsgi.input_terminated") and "HTTP_TRANSFER_ENCODING" in environ:
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge()
        return body
    return b""


class ProxyApp:
    """Routes requests to the local endpoints or forwards them to a member."""

    def __init__(self, endpoints, transport, readonly=False, max_body=4 << 20, status=None):
        self.endpoints = endpoints
        self.transport = transport
        self.readonly = readonly
        self.max_body = max_body
        # callable returning extra fields for the config endpoint (membership state)
        self.status = status or (lambda: {})

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if self.readonly and method != "GET":
            start_response("501 Not Implemented", [("Content-Length", "0")])
            return []
        if environ.get("PATH_INFO") == CONFIG_PATH:
            return self.local_config(method, start_response)
        return self.forward(environ, start_response)

    # --- local endpoint -------------------------------------------------------------

    def local_config(self, method, start_response):
        if method != "GET":
            body = b"Method Not Allowed\n"
            start_response("405 Method Not Allowed", [
                ("Allow", "GET"), ("Content-Type", "text/plain; charset=utf-8"),
                ("X-Content-Type-Options", "nosniff"), ("Content-Length", str(len(body)))])
            return [body]
        doc = {"endpoints": [ep.url for ep in self.endpoints.available()]}
        doc.update(self.status())
        body = json.dumps(doc).encode() + b"\n"
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # --- forwarding -----------------------------------------------------------------

    def forward(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        try:
            body = read_body(environ, self.max_body)
        except BodyTooLarge:
            return _json_error(start_response, "413 Request Entity Too Large",
                               "httpproxy: request body larger than %d bytes" % self.max_body,
                               close=True)
        except (ValueError, OSError) as exc:  # bad chunked framing, short body
            return _json_error(start_response, "400 Bad Request",
                               "httpproxy: failed to read request body: %s" % exc, close=True)
        target = request_target(environ)
        headers = request_headers(environ)
        if body or "CONTENT_LENGTH" in environ or method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))

        candidates = self.endpoints.available()
        if not candidates:
            log.warning("zero endpoints currently available")
            return _json_error(start_response, "503 Service Unavailable",
                               "httpproxy: zero endpoints currently available")
        resp = None
        for endpoint in candidates:
            try:
                resp = self.transport.request(endpoint.url, method, target, headers, body or None)
                break
            except UpstreamError as exc:
                if self.endpoints.mark_failed(endpoint):
                    log.warning("marked endpoint %s unavailable: %s", endpoint.url, exc)
                if exc.sent and method not in RETRY_ELSEWHERE:
                    return _json_error(
                        start_response, "502 Bad Gateway",
                        "httpproxy: member %s failed mid-request (%s); not retried on "
                        "another member because it may have been applied"
                        % (endpoint.url, exc))
        if resp is None:
            return _json_error(start_response, "502 Bad Gateway",
                               "httpproxy: unable to get response from %d endpoint(s)"
                               % len(candidates))
        return self.respond(environ, start_response, method, resp)

    def respond(self, environ, start_response, method, resp):
        status = "%d %s" % (resp.status, resp.reason)
        headers = response_headers(resp.headers)
        if method != "HEAD" and is_watch(environ.get("QUERY_STRING", "")):
            return self.stream(environ, start_response, status, headers, resp)
        try:
            body = resp.read()  # read to the end, so the connection goes back to the pool
        except UpstreamError as exc:
            log.warning("member response body failed: %s", exc)
            return _json_error(start_response, "502 Bad Gateway",
                               "httpproxy: member response ended early: %s" % exc, close=True)
        if method == "HEAD":  # keep the member's Content-Length; send no body
            start_response(status, headers)
            return []
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def stream(self, environ, start_response, status, headers, resp):
        """Flush the headers now, then each chunk as the member sends it."""
        write = start_response(status, headers)
        write(b"")  # pywsgi sends the headers on an explicit empty write
        guard = disconnect.watch(environ)
        try:
            for chunk in resp.stream():
                if chunk:
                    yield chunk
        except UpstreamError as exc:
            log.info("watch stream from member ended: %s", exc)
        finally:
            guard.cancel()
            resp.close()
