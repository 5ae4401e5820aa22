"""geproxy.logs: how the proxy writes its log, and how it keeps floods out of it.

One line per event on stdout (12-factor), never buffered, in one of two
formats (``--log-format``):

* ``text``: ``2024-05-01 12:00:00,123 INFO geproxy.membership: message``,
  then ``key=value`` for the event's fields (the access log's);
* ``json``: one object per line, as etcd 3.4's zap logger writes them:
  ``level`` (debug, info, warn, error), ``ts`` (ISO 8601, UTC), ``logger``,
  ``caller``, ``msg``, then the event's fields; a traceback goes in
  ``stacktrace``, inside the line.

Fields travel as ``extra={"fields": {...}}``; ``line()`` makes a line without a
LogRecord (the access log's).  Under ``--workers`` every line carries the pid of
the process that wrote it.

``Every`` is the one rate limit for lines that could repeat per request or per
connection (shed connections, rejected input, no endpoints, running out of
files): at most one line per interval, saying how many were folded into it.
"""

import json
import logging
import os
import sys
import time

from geproxy.settings import PROG

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}
_ZAP_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
               logging.ERROR: "error", logging.CRITICAL: "fatal"}


def _text_value(value):
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in " \t\"=") else text


class _Stamps:
    """Timestamps with milliseconds; the date and time made once per second."""

    __slots__ = ("layout", "convert", "millis", "second", "prefix")

    def __init__(self, layout, convert, millis):
        self.layout, self.convert, self.millis = layout, convert, millis
        self.second = self.prefix = None

    def __call__(self, created):
        second = int(created)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime(self.layout, self.convert(second))
        return self.millis % (self.prefix, (created - second) * 1000)


class TextFormatter(logging.Formatter):
    """Plain lines: time, level, logger, message, then the event's fields as key=value."""

    def __init__(self, pid=False):
        super().__init__()
        self.pid = pid
        self.stamp = _Stamps("%Y-%m-%d %H:%M:%S", time.localtime, "%s,%03d")

    def line(self, level, name, message, fields=None, created=None, caller="", process=None):
        """One line from its parts (what ``format`` does for a LogRecord)."""
        created = time.time() if created is None else created
        pid = "[%d]" % (process or os.getpid()) if self.pid else ""
        text = "%s %s %s%s: %s" % (self.stamp(created), logging.getLevelName(level), name, pid,
                                   message)
        if fields:
            text += "".join(" %s=%s" % (k, _text_value(v)) for k, v in fields.items())
        return text

    def format(self, record):
        text = self.line(record.levelno, record.name, record.getMessage(),
                         getattr(record, "fields", None), record.created, process=record.process)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with zap's keys (etcd 3.4's ``--logger zap``)."""

    def __init__(self, pid=False):
        super().__init__()
        self.pid = pid
        self.stamp = _Stamps("%Y-%m-%dT%H:%M:%S", time.gmtime, "%s.%03dZ")

    def line(self, level, name, message, fields=None, created=None, caller="", process=None,
             stacktrace=None):
        """One line from its parts (what ``format`` does for a LogRecord)."""
        doc = {"level": _ZAP_LEVELS.get(level) or logging.getLevelName(level).lower(),
               "ts": self.stamp(time.time() if created is None else created),
               "logger": name}
        if caller:
            doc["caller"] = caller
        doc["msg"] = message
        if self.pid:
            doc["pid"] = process or os.getpid()
        if fields:
            doc.update(fields)
        if stacktrace:
            doc["stacktrace"] = stacktrace
        return json.dumps(doc, separators=(",", ":"), default=str)

    def format(self, record):
        return self.line(record.levelno, record.name, record.getMessage(),
                         getattr(record, "fields", None), record.created,
                         "%s:%d" % (record.filename, record.lineno), record.process,
                         self.formatException(record.exc_info) if record.exc_info else None)


def line_format():
    """The formatter setup() chose (its ``line()`` makes a line without the logging module)."""
    for handler in logging.getLogger().handlers:
        if hasattr(handler.formatter, "line"):
            return handler.formatter
    return TextFormatter()


def setup(level, fmt="text", pid=False):
    """Send every log line to stdout in format ``fmt`` (text or json) at ``level``;
    ``pid`` adds the writing process's pid (several processes share stdout)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(pid) if fmt == "json" else TextFormatter(pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])


class Every:
    """Log a recurring event at most once per ``interval`` seconds, with a count.

    Calling it records one occurrence; the first one, and the first after each
    interval, is logged at ``level`` with " (N more since the last line)" when
    others were swallowed.  ``debug`` logs each occurrence at debug level too,
    for an operator who wants them all.
    """

    __slots__ = ("log", "level", "interval", "debug", "_last", "_folded", "total")

    def __init__(self, logger, level=logging.WARNING, interval=10.0, debug=False):
        self.log = logger
        self.level = level
        self.interval = interval
        self.debug = debug
        self._last = None
        self._folded = 0
        self.total = 0

    def __call__(self, message, *args):
        self.total += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._folded += 1
            if self.debug:
                self.log.debug(message, *args)
            return False
        self._last = now
        folded, self._folded = self._folded, 0
        if folded:
            message += " (%d more since the last line)" % folded
        self.log.log(self.level, message, *args)
        return True


def fatal(message, status=1):
    """End the process: one line on stderr (and in the log), then exit ``status``.

    Exit 1 for a proxy that cannot run (bad cluster file, failed discovery,
    a port in use); under gunicorn a worker exits with the arbiter's boot
    error status instead, so the arbiter halts rather than respawning it.
    """
    logging.getLogger("geproxy").error("%s", message)
    sys.stderr.write("%s: %s\n" % (PROG, message))
    sys.stderr.flush()
    sys.exit(status)
