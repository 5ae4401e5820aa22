"""geproxy.errors: every exception the proxy raises on purpose, in one place.

Like ``requests.exceptions`` and ``gunicorn.errors``, this module imports
nothing from the project, so any module may raise these without an import
cycle.  The families map onto the three ways the proxy answers trouble:

* exit status 2, one line naming the flag: ``UsageError`` (and ``SettingError``,
  a value a parser refused, before the flag name is known);
* exit status 1, one line: ``FatalError`` and its kinds (bootstrap, discovery,
  data dir, the auto-TLS certificate folder);
* an HTTP answer to one client: ``BadRequest`` (4xx, and 501/505 for framing
  or a version we do not serve; made by the connection handler before the app
  sees the request), ``UpstreamError`` (5xx, no usable
  member answer).
"""

import errno
import json

from greenlet import GreenletExit


class GeproxyError(Exception):
    """Base of everything below."""


# --- exit 2: bad command line or environment --------------------------------------


class SettingError(GeproxyError, ValueError):
    """A value that cannot be used; the message says why, without the flag name."""


class TLSSettingError(SettingError):
    """A TLS flag whose file or value cannot be used (a missing file, a key that does
    not match its certificate); ``setting`` is the flag's attribute, ``value`` what
    it was given."""

    def __init__(self, setting, value, message):
        super().__init__(message)
        self.setting = setting
        self.value = value


class UsageError(GeproxyError):
    """Bad command line or environment: one line for the user, exit status 2."""


# --- exit 1: the proxy cannot run ------------------------------------------------------


class FatalError(GeproxyError):
    """The proxy cannot go on; one line for the operator, exit status 1."""


class BootstrapError(FatalError):
    """The first peer URLs cannot be learned."""


class DiscoveryError(BootstrapError):
    """The discovery service or DNS gave a definite, non-retryable error."""


class DataDirError(FatalError):
    """The data dir cannot be used; the message names the path and the reason."""


class MembersError(GeproxyError):
    """No peer URL gave a usable member list (a refresh round failed; not fatal)."""


# --- 4xx (and 501/505): a client request the handler refuses ---------------------------


class BadRequest(GeproxyError):
    """A request the proxy will not forward; answered with ``status`` and closed."""

    status = "400 Bad Request"


class HeadTooLarge(BadRequest):
    status = "431 Request Header Fields Too Large"


class TargetTooLong(BadRequest):
    status = "414 URI Too Long"


class BodyTooLarge(BadRequest):
    status = "413 Request Entity Too Large"


class MethodNotAllowed(BadRequest):
    """CONNECT: a proxy in front of etcd opens no tunnels."""

    status = "405 Method Not Allowed"


class ExpectationFailed(BadRequest):
    status = "417 Expectation Failed"


class NotImplementedFraming(BadRequest):
    """A transfer coding other than chunked (Go's net/http answers 501 too)."""

    status = "501 Not Implemented"


class VersionNotSupported(BadRequest):
    status = "505 HTTP Version Not Supported"


class ClientTimeout(GeproxyError):
    """A started request head or body stopped making progress: the connection closes."""


class ClientGone(GreenletExit):
    """The client closed its connection while its request was being served.

    A GreenletExit, so gevent prints no traceback when it ends a greenlet.
    """


class WatchEnded(GreenletExit):
    """The proxy is stopping: a watch waiting for an event ends now, cleanly."""


# --- 5xx: no usable member answer ------------------------------------------------------


class UpstreamError(GeproxyError):
    """The member gave no usable response; the request may have reached it.

    ``sent`` decides the retry rule: once bytes may have reached a member,
    only GET and HEAD go on to another member.
    """

    sent = True


class ConnectError(UpstreamError):
    """No connection could be made: nothing was sent, any method may be retried."""

    sent = False


class OutOfFiles(ConnectError):
    """This process had no file descriptor for the connection: not the member's fault."""


class MemberTimeout(UpstreamError):
    """The member sent no answer within the header timeout; it may have applied a write."""


class BadResponse(UpstreamError):
    """The member's answer broke HTTP/1.1 framing (or ended early)."""


class PipeBroken(GeproxyError):
    """A pipelined request's connection ended before its answer began (geproxy.pipeline).

    Never reaches the app: the client sends the request again (a GET) on a
    connection of its own.
    """


def causes(exc):
    """exc and what it wraps (requests -> urllib3 -> OSError/SSLError chains), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        nxt = getattr(exc, "reason", None)  # urllib3's wrapped error; SSLError's is a str
        if not isinstance(nxt, BaseException):
            nxt = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = nxt if nxt is not None else (exc.__cause__ or exc.__context__)


def connect_error(base_url, exc):
    """The ConnectError for a failed connect to ``base_url``: OutOfFiles when the proxy
    lacked a descriptor (anywhere in the chain ``exc`` wraps), not the member's fault."""
    if any(isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE)
           for e in causes(exc)):
        return OutOfFiles("%s: %s" % (base_url, exc))
    return ConnectError("%s: %s" % (base_url, exc))


# --- the proxy's own JSON error answers ---------------------------------------------------


def error_answer(status, message, close=False):
    """(status, headers, body) of a JSON error answer, as the Go proxy writes them:
    ``{"message":"httpproxy: ..."}``, compact, no trailing newline."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    return status, headers, body
