"""geproxy.logs: how the proxy writes its log, and how it keeps floods out of it.

``Every`` is the one rate limit for lines that could repeat per request or per
connection (shed connections, rejected input, no endpoints, running out of
files): at most one line per interval, saying how many were folded into it.
"""

import logging
import sys
import time

from geproxy.settings import PROG


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
