"""Loopback networking for the harness: free ports, tiny HTTP calls, the loopback guard.

Only the standard library, and only blocking calls gevent knows how to patch,
so these behave the same with or without ``gevent.monkey.patch_all()``.
HTTP goes through urllib with no ProxyHandler: a developer's ``http_proxy``
must never intercept traffic to 127.0.0.1.  https URLs take an
``ssl.SSLContext`` (``context``: the CA to trust, a client certificate).
"""

import json
import socket
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["free_port", "http", "http_json", "v2_put", "loopback_url"]

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _opener_for(context):
    if context is None:
        return _opener
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=context))


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (bound to port 0, then closed).

    Someone else may take it before it is used again; LocalCluster.start()
    and ProxyProcess.start() retry with fresh ports when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http(method, url, data=None, headers=None, timeout=2.0, context=None):
    """One HTTP request; (status, body bytes).

    HTTP errors are returned rather than raised: etcd's 4xx/5xx bodies carry
    the answer. Transport errors (refused, timeout, TLS) raise OSError.
    """
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener_for(context).open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return e.code, body


def http_json(method, url, payload=None, timeout=2.0, context=None):
    """Like http(), with a JSON request body (if any) and the body decoded from JSON.

    A body that is not JSON is returned as bytes, so a caller can show it.
    """
    data = headers = None
    if payload is not None:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
    status, body = http(method, url, data, headers, timeout, context)
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body


def v2_put(client_url, key, value, timeout=2.0, context=None):
    """PUT value at key through etcd's v2 keys API; (status, body bytes)."""
    data = urllib.parse.urlencode({"value": value}).encode()
    return http("PUT", "%s/v2/keys/%s" % (client_url, key.lstrip("/")), data,
                {"Content-Type": "application/x-www-form-urlencoded"}, timeout, context)


def loopback_url(url):
    """url itself, or ValueError when its host is not loopback.

    Everything this harness starts listens on loopback only, so that a test
    run never exposes an etcd or a proxy to the network.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("localhost", "::1") and not host.startswith("127."):
        raise ValueError("only loopback URLs are allowed, got %r" % (url,))
    return url
