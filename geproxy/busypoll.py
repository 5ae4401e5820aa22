"""geproxy.busypoll: poll for a moment before sleeping, while that pays.

Why: at low concurrency every request puts the proxy to sleep twice, once
waiting for the member's answer and once for the client's next request, and
on this kind of machine (a VM whose idle CPU halts) the wake-up costs more than
the wait: with one client connection making requests back to back, polling
took the proxy's p50 from 1.0x the Go proxy's to 0.6x (0.5x over TLS) and its
req/s from 1.0x to 1.7x, for about the same CPU per request
(bench/README.md).  An answer that arrives while the loop polls is taken at
once, on a CPU that is already running.  The Go runtime does the same: its
idle threads spin looking for work before they park.

Only while it pays: polling through gaps longer than the window is CPU spent
for nothing (a client pacing one request a millisecond cost 90-130 µs more
per request, with no gain in latency).  So every wait of the loop is timed,
polled or not, and a moving score counts the waits an event ended within the
window.  The loop polls while the score says most recent waits were that
short, and sleeps at once otherwise: an idle proxy, whose only events are its
timers, never polls; under load the loop seldom runs out of events and
polling hardly starts (at 50 connections it made no measurable difference).

How: while libev has an active idle watcher it polls with a zero timeout and
calls the idle watcher whenever a turn brought no event.  A prepare watcher
notes when a wait began; a check watcher (every turn, before the idle
watcher of the same turn) ends a poll that has outlasted the window, and on
a turn that brought an event scores the wait and starts or stops polling.
"""

import time

import gevent

RATE = 1 / 16  # weight of the newest wait in the score
THRESHOLD = 0.75  # poll while at least this share of recent waits ended within the window


class BusyPoll:
    """Keeps the hub's loop polling up to ``window`` seconds for its next event,
    while most recent waits were that short.

    ``window`` 0 installs nothing.  ``polls`` counts the loop turns that
    found no event while polling; ``score`` is the moving share of waits that
    an event ended within the window.
    """

    def __init__(self, window):
        self.window = window
        self.polls = 0
        self.score = 0.0
        self._prepare = self._check = self._idle = None
        self._waiting_since = None  # when the current wait began (None: not waiting)

    def start(self):
        if self.window <= 0 or self._idle is not None:
            return
        loop = gevent.get_hub().loop
        self._idle = loop.idle(ref=False)
        self._prepare = loop.prepare(ref=False)
        self._check = loop.check(ref=False)
        self._prepare.start(self._before_wait)
        self._check.start(self._after_turn)

    def _before_wait(self):
        if self._waiting_since is None:
            self._waiting_since = time.perf_counter()

    def _after_turn(self):
        since = self._waiting_since
        if since is None:  # started during this turn, after its prepare watchers ran
            return
        now = time.perf_counter()
        waited = now - since
        idle = self._idle
        if idle.pending:  # a poll that found nothing
            if waited > self.window:
                idle.stop()  # sleep until the next event
            return
        self._waiting_since = None
        self.score += ((waited <= self.window) - self.score) * RATE
        if self.score >= THRESHOLD:
            if not idle.active:
                idle.start(self._polled)
        elif idle.active:
            idle.stop()

    def _polled(self):
        self.polls += 1

    def stop(self):
        for watcher in (self._idle, self._prepare, self._check):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._idle = self._prepare = self._check = None
