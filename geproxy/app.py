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
away closes the upstream request (see ``disconnect``).  Concurrent identical
one-shot watches share one upstream request (``coalesce``; on unless
``coalesce_watches=False``): each client still gets the member's headers as
soon as the shared request has them, then the event.
"""

import json
import logging

from geproxy import disconnect
from geproxy.coalesce import Coalescer, watch_key
from geproxy.cors import CORS, start
from geproxy.endpoints import BINDING
from geproxy.errors import (BadRequest, BodyTooLarge, MemberTimeout, OutOfFiles, UpstreamError,
                            WatchEnded, error_answer)
from geproxy.headers import RELAY, raft_term, request_headers, request_target
from geproxy.logs import Every
from geproxy.meter import FAILED_GETTING, ZERO_ENDPOINTS
from geproxy.metrics import METRICS_PATH, metrics_page
from geproxy.shutdown import Watches
from geproxy.values import GO_TRUE

log = logging.getLogger("geproxy.app")

CONFIG_PATH = "/v2/config/local/proxy"
RETRY_ELSEWHERE = frozenset(("GET", "HEAD"))


class ProxyError(Exception):
    """No member answer to pass on: the proxy answers with its own JSON error."""

    def __init__(self, status, message, reason=FAILED_GETTING):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # for etcd_proxy_dropped_total (meter)

    def parts(self):
        """(status, headers, body) of the error response."""
        return error_answer(self.status, self.message)


def _json_error(environ, start_response, status, message, close=False):
    status, headers, body = error_answer(status, message, close)
    start(environ, start_response, status, headers)
    return [body]


def _with_length(headers, body):
    """Headers for a body known in full: the member's, with its exact Content-Length."""
    headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    return headers


def _query_flag(query, flag):
    """True if the query sets ``flag`` to true (any Go ParseBool spelling)."""
    if flag + "=" not in query:
        return False
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == flag and value in GO_TRUE:
            return True
    return False


def is_watch(query):
    """True for etcd watch requests (``wait=true``, any ParseBool spelling)."""
    return _query_flag(query, "wait")


def is_stream(query):
    """True for stream watches (``stream=true``): many events, never coalesced."""
    return _query_flag(query, "stream")


def upstream_headers(environ, method, body):
    """The request headers to send to a member, with the body's Content-Length."""
    headers = request_headers(environ)
    if body or "CONTENT_LENGTH" in environ or method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(body))))
    return headers


def read_body(environ, limit):
    """The whole request body (bounded by ``limit`` bytes), or BodyTooLarge."""
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        size = int(length)
        if size > limit:
            raise BodyTooLarge()
        return stream.read(size) if size else b""
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge()
        return body
    return b""


class ProxyApp:
    """Routes requests to the local endpoints or forwards them to a member.

    ``status`` returns extra fields for the config endpoint and ``waiting``
    a reason while no member list is known yet (both from membership);
    ``header_timeout`` bounds a non-watch exchange with one member (seconds,
    0 = none): a hung member is then marked failed instead of hanging clients.
    ``coalesce_watches`` lets identical one-shot watches share one upstream
    request (``--proxy-coalesce-watches``).  ``meter`` (meter.Meter) counts
    for the metrics, ``metrics`` (metrics.Exporter) answers /metrics, ``cors``
    (cors.Cors) adds the CORS headers; each None means off.  ``watches`` are
    the waiting watches a graceful stop ends (shutdown).
    """

    def __init__(self, endpoints, transport, readonly=False, max_body=4 << 20,
                 header_timeout=0.0, status=None, waiting=None, coalesce_watches=True,
                 meter=None, metrics=None, cors=None):
        self.endpoints = endpoints
        self.transport = transport
        self.readonly = readonly
        self.max_body = max_body
        self.header_timeout = header_timeout or None
        self.status = status or (lambda: {})
        self.waiting = waiting or (lambda: None)
        self.coalescer = Coalescer() if coalesce_watches else None
        self.meter = meter
        self.metrics_page = metrics_page(metrics)
        self.cors = cors
        self.watches = Watches()
        self._no_files = Every(log)
        self._no_endpoints = Every(log)

    def __call__(self, environ, start_response):
        """In the Go proxy's order: /metrics, the readonly gate, CORS, then the routes."""
        if environ.get("PATH_INFO") == METRICS_PATH:
            return self.metrics_page(environ, start_response)
        if self.readonly and environ["REQUEST_METHOD"] != "GET":
            start_response("501 Not Implemented", [("Content-Length", "0")])
            return []
        cors = self.cors
        if cors is not None:
            answer = cors.everyone if cors.any else cors.answer(environ)
            if environ["REQUEST_METHOD"] == "OPTIONS":
                return cors.preflight(answer, start_response)
            if answer is not None:
                environ[CORS] = answer
        if environ.get("PATH_INFO") == CONFIG_PATH:
            return self.local_config(environ, start_response)
        return self.forward(environ, start_response)

    # --- local endpoint -------------------------------------------------------------

    def local_config(self, environ, start_response):
        if environ["REQUEST_METHOD"] != "GET":
            body = b"Method Not Allowed\n"
            start(environ, start_response, "405 Method Not Allowed", [
                ("Allow", "GET"), ("Content-Type", "text/plain; charset=utf-8"),
                ("X-Content-Type-Options", "nosniff"), ("Content-Length", str(len(body)))])
            return [body]
        doc = {"endpoints": [ep.url for ep in self.endpoints.available()]}
        doc.update(self.status())
        body = json.dumps(doc).encode() + b"\n"
        start(environ, start_response, "200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # --- forwarding -----------------------------------------------------------------

    def forward(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        meter = self.meter
        started = meter.request(method) if meter is not None else 0.0
        try:
            body = b"" if "CONTENT_LENGTH" not in environ and \
                "HTTP_TRANSFER_ENCODING" not in environ else read_body(environ, self.max_body)
        except BodyTooLarge:
            return _json_error(environ, start_response, BodyTooLarge.status,
                               "httpproxy: request body larger than %d bytes" % self.max_body,
                               close=True)
        except BadRequest as exc:  # malformed chunked framing, a body cut short
            return _json_error(environ, start_response, exc.status,
                               "httpproxy: failed to read request body: %s" % exc, close=True)
        target = environ.get("RAW_URI")
        if not target or target[0] != "/":
            target = request_target(environ)
        query = environ.get("QUERY_STRING", "")
        watch = method == "GET" and is_watch(query)

        write = method not in RETRY_ELSEWHERE
        candidates = self.endpoints.ordered(environ.get(BINDING), write=write)
        if watch and self.coalescer is not None and not body and not is_stream(query):
            return self.coalesced(environ, start_response, candidates, target, started)
        headers = upstream_headers(environ, method, body)
        try:
            resp, content = self.send(candidates, method, target, headers, body, watch)
        except ProxyError as exc:
            if meter is not None:
                meter.settled(environ, method, 0, exc.reason, started)
            return _json_error(environ, start_response, exc.status, exc.message)
        if meter is not None:
            meter.settled(environ, method, resp.status, resp.member, started)
        if write:  # a new term in the answer: the leader may have changed
            self.endpoints.note_term(raft_term(resp.headers))
        if content is None:
            return self.stream(environ, start_response, resp, watch)
        return self.respond(environ, start_response, method, resp, content)

    def send(self, candidates, method, target, headers, body, watch):
        """The first usable member answer, trying ``candidates`` in order.

        Returns (response, whole body), or (response, None) for a watch whose
        body is still to come; raises ProxyError when no member answered or a
        write must not be retried elsewhere.  Both plain forwarding and the
        shared upstream request of coalesced watches come through here.
        """
        if not candidates:
            reason = self.waiting() or "zero endpoints currently available"
            self._no_endpoints("%s", reason)
            raise ProxyError("503 Service Unavailable", "httpproxy: " + reason, ZERO_ENDPOINTS)
        meter = self.meter
        for endpoint in candidates:
            try:
                answer = self.exchange(endpoint, method, target, headers, body, watch)
                if meter is not None:
                    meter.answered(endpoint.url, answer[0].head_seconds)
                return answer
            except UpstreamError as exc:
                if meter is not None:
                    meter.failed(method, endpoint.url)
                if isinstance(exc, OutOfFiles):  # our limit, not the member's: keep it available
                    self._no_files("out of file descriptors for upstream connections, "
                                   "answering 503: %s", exc)
                    raise ProxyError("503 Service Unavailable",
                                     "httpproxy: out of file descriptors") from None
                if self.endpoints.mark_failed(endpoint):
                    log.warning("marked endpoint %s unavailable: %s", endpoint.url, exc)
                if exc.sent and method not in RETRY_ELSEWHERE:
                    raise self.not_retried(endpoint, exc) from None
        raise ProxyError("502 Bad Gateway",
                         "httpproxy: unable to get response from %d endpoint(s)"
                         % len(candidates))

    def exchange(self, endpoint, method, target, headers, body, watch):
        """One member's answer: (response, whole body), or (response, None) to stream.

        A non-watch request waits at most header_timeout for the member's
        head; watches wait as long as the member keeps them open (only
        --proxy-read-timeout cuts them).  A body of unknown length is
        streamed, whatever the request.
        """
        resp = self.transport.request(endpoint.url, method, target, headers, body,
                                      None if watch else self.header_timeout)
        if watch or resp.streaming:
            return resp, None
        return resp, resp.read()

    def not_retried(self, endpoint, exc):
        """The error for a write that may have reached a member: never sent to a second one."""
        if isinstance(exc, MemberTimeout):
            return ProxyError(
                "504 Gateway Timeout",
                "httpproxy: member %s gave no answer in time (%s); not retried on another "
                "member because it may have been applied" % (endpoint.url, exc))
        return ProxyError(
            "502 Bad Gateway",
            "httpproxy: member %s failed mid-request (%s); not retried on another member "
            "because it may have been applied" % (endpoint.url, exc))

    def respond(self, environ, start_response, method, resp, content):
        """A member answer whose body is known in full (framed by its Content-Length,
        which passes on unchanged; on HEAD the member's length of the GET).

        Under our own server the member's header block goes on as it came
        (``RELAY``) when nothing in it must be dropped: no list of headers is
        built and joined again.
        """
        relay = environ.get(RELAY)
        if relay is not None and resp.relayable:
            answer = environ.get(CORS)
            relay(resp.status_text, resp.raw_fields if answer is None
                  else answer.add_block(resp.raw_fields))
        else:
            start(environ, start_response, resp.status_text, resp.forward_headers())
        return [content] if method != "HEAD" else []

    def stream(self, environ, start_response, resp, watch):
        """Flush the headers now, then each chunk as the member sends it (``watch``: a
        graceful stop may end it)."""
        write = start(environ, start_response, resp.status_text, resp.forward_headers())
        write(b"")  # pywsgi sends the headers on an explicit empty write
        guard = disconnect.watch(environ)
        waiting = None
        try:
            if watch:
                waiting = self.watches.enter()
            for chunk in resp.stream():
                if chunk:
                    yield chunk
        except UpstreamError as exc:
            log.info("watch stream from member ended: %s", exc)
        except WatchEnded:
            pass  # the proxy stops: the answer ends here, the client watches again
        finally:
            if waiting is not None:
                self.watches.leave(waiting)
            guard.cancel()
            resp.close()

    # --- coalesced watches ------------------------------------------------------------

    def coalesced(self, environ, start_response, candidates, target, started=0.0):
        """A one-shot watch answered from the group of identical watches it joins.

        The member's headers are flushed as soon as the group has them (a
        client joining later gets them at once), then the event.  Leaving is
        in the ``finally``, also when the disconnect guard kills this greenlet.
        A plain function, not a generator: one C frame less in the stack each
        waiting client's greenlet saves (about 0.7 KB per client).
        """
        group = guard = waiting = None
        try:
            group = self.coalescer.join(
                watch_key(target, environ.get("HTTP_AUTHORIZATION")),
                self.watch_answer, candidates, target, environ)
            guard = disconnect.watch(environ)
            status, response_hdrs, source = group.head.get()
            if self.meter is not None:
                self.meter.settled(environ, "GET", int(status[:3]), source, started)
            if group.body.ready():  # all there: one write, with its length
                content = group.body.get()
                start(environ, start_response, status, _with_length(response_hdrs, content))
            else:
                write = start(environ, start_response, status, response_hdrs)
                write(b"")
                try:
                    waiting = self.watches.enter()
                    content = group.body.get()
                except WatchEnded:  # the proxy stops: the answer ends here, the client
                    return []  # watches again
            return [content] if content else []
        finally:
            if waiting is not None:
                self.watches.leave(waiting)
            if guard is not None:
                guard.cancel()
            if group is not None:
                self.coalescer.leave(group)

    def watch_answer(self, candidates, target, environ):
        """The shared upstream request of a group: yields (status, headers, source), then
        the body; ``source`` is the member's URL, or the drop reason of our own answer.

        Runs in the group's own greenlet, with the first client's request
        headers (only that client's are ever built); closing the generator
        (the last client left) closes the upstream response.
        """
        headers = upstream_headers(environ, "GET", b"")
        environ = None  # the first client may leave before the group ends
        try:
            resp, _ = self.send(candidates, "GET", target, headers, b"", True)
        except ProxyError as exc:
            status, error_headers, content = exc.parts()
            yield status, error_headers, exc.reason
            yield content
            return
        try:
            yield resp.status_text, resp.forward_headers(), resp.member
            try:
                content = resp.read()
            except UpstreamError as exc:
                log.info("shared watch from member ended: %s", exc)
                content = b""
            yield content
        finally:
            resp.close()
