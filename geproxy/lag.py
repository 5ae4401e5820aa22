"""geproxy.lag: how late the proxy's own event loop runs, so members are not blamed for it.

A timer that should fire every ``TICK`` seconds measures how late it fires.
When the proxy is saturated (thousands of connections, one core) a greenlet
can wait for the CPU longer than a member takes to answer; a head timeout
that expires then says nothing about the member.  ``lagged_since(t)`` tells
the upstream client whether the loop was late (by more than ``THRESHOLD``)
at any time since ``t``; a dial or a head timeout that expired then is
extended (up to ``EXTENSIONS`` times) instead of failing the member.
"""

import time

import gevent

TICK = 0.05  # seconds between two measurements
THRESHOLD = 0.1  # seconds late that count as lagging
EXTENSIONS = 10  # times a member's timeout may be extended while the proxy itself lags


def lagged(lag, since):
    """Whether ``lag`` (a LoopLag, or None: not measured) saw the loop late since ``since``."""
    return lag is not None and lag.lagged_since(since)


class LoopLag:
    """The event loop's lateness, measured by a repeating timer while started."""

    def __init__(self, tick=TICK, threshold=THRESHOLD, clock=time.monotonic):
        self.tick = tick
        self.threshold = threshold
        self.clock = clock
        self.lagged_at = float("-inf")  # when the loop was last seen lagging
        self._expected = None
        self._timer = None

    def start(self):
        loop = gevent.get_hub().loop
        self._timer = loop.timer(self.tick, self.tick)
        self._expected = self.clock() + self.tick
        self._timer.start(self._tick)

    def _tick(self):
        now = self.clock()
        late = max(0.0, now - self._expected)
        self._expected = now + self.tick
        if late > self.threshold:
            self.lagged_at = now

    def lagged_since(self, since):
        """True if the loop lagged at any tick since ``since`` (a monotonic time),
        or lags now (the current tick is overdue)."""
        if self.lagged_at >= since:
            return True
        return self._expected is not None and self.clock() - self._expected > self.threshold

    def stop(self):
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
