"""LoopLag: the proxy knows when its own event loop ran late, so that a dial or a head
timeout that expired meanwhile is not blamed on the member (client.py, pool.py)."""

import time

import gevent
from gevent.monkey import get_original

from geproxy.lag import LoopLag, lagged

blocking_sleep = get_original("time", "sleep")  # holds the whole loop, as a long turn does


def test_a_loop_held_past_the_threshold_is_seen_lagging_then_and_not_before():
    lag = LoopLag(tick=0.02, threshold=0.1)
    lag.start()
    try:
        gevent.sleep(0.1)  # ticks on time
        before = time.monotonic()
        assert not lag.lagged_since(before)
        blocking_sleep(0.4)
        # the tick is overdue: lagging now, before its timer has even run
        assert lag.lagged_since(before) and lagged(lag, before)
        gevent.sleep(0.03)  # the late tick runs and records it
        assert lag.lagged_at >= before
        assert lag.lagged_since(before)
        assert not lag.lagged_since(time.monotonic() + 1)  # nothing late after it
    finally:
        lag.stop()


def test_no_lag_measured_excuses_nothing():
    assert not lagged(None, time.monotonic())
