"""geproxy.accesslog: ``--access-log``, one line per request once its answer is out.

Fields: ``method``, ``target`` (as the client sent it), ``status``,
``member`` (the member whose answer it got; empty when the proxy answered
itself), ``duration_ms`` (from the request head to the end of the answer,
so a watch's line comes when it ends), ``bytes`` (body bytes sent) and
``client``.  The line is the log's (``--log-format``, from ``logs``): after
``request`` as key=value in text, keys of the object in JSON, at level info
whatever ``--log-level`` says.

The access log is a subclass of the connection handler, chosen at start only
when the flag is on: with it off nothing of it runs per request.  With it on,
a line is made without the logging module (a LogRecord, a lock and a write
per line would cost more than the request) and the lines of one event-loop
turn go out in one write at its end.  Its cost is in bench/README.md.
"""

import atexit
import logging
import sys
from time import monotonic

from gevent import get_hub

from geproxy.handler import ProxyHandler
from geproxy.logs import line_format
from geproxy.meter import MEMBER

NAME = "geproxy.access"


class AccessLines:
    """Access-log lines waiting for the end of the event-loop turn, then written at once."""

    def __init__(self, formatter, stream=None):
        self.formatter = formatter
        self.stream = stream or sys.stdout
        self.pending = []
        atexit.register(self.flush)

    def add(self, fields):
        self.pending.append(self.formatter.line(logging.INFO, NAME, "request", fields))
        if len(self.pending) == 1:
            get_hub().loop.run_callback(self.flush)

    def flush(self):
        lines, self.pending = self.pending, []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


class AccessLogHandler(ProxyHandler):
    """ProxyHandler that writes an access-log line after each answer (to ``lines``)."""

    lines = None  # an AccessLines, set by handler_class()
    body_bytes = 0

    def respond(self, app, env):
        self.body_bytes = 0
        started = monotonic()
        try:
            super().respond(app, env)
        finally:
            status = self._status
            self.lines.add({
                "method": env.get("REQUEST_METHOD"),
                "target": env.get("RAW_URI"),
                "status": int(status[:3]) if status and self._sent else 0,
                "member": env.get(MEMBER, ""),
                "duration_ms": round((monotonic() - started) * 1000.0, 3),
                "bytes": self.body_bytes,
                "client": env.get("REMOTE_ADDR") or "unix",
            })

    def send_head(self, data, complete):
        if data and not self._head_only:
            self.body_bytes += len(data)
        return super().send_head(data, complete)

    def write(self, data):
        if self._sent and data and not self._head_only:
            self.body_bytes += len(data)
        return super().write(data)


def handler_class(access_log):
    """The connection handler: ProxyHandler, or with ``--access-log`` one that logs each
    request (its lines in the log format set up by then)."""
    if not access_log:
        return ProxyHandler

    class Handler(AccessLogHandler):
        lines = AccessLines(line_format())

    return Handler
