"""The server's pool: connection greenlets started by the event loop begin at once."""

import time

import gevent
import pytest
from gevent.event import Event
from gevent.pool import Pool

from geproxy.server import StartNowPool


def from_the_loop(func):
    """Run func() in the event loop itself (the hub), as accepting a connection does."""
    done = Event()

    def callback():
        try:
            func()
        finally:
            done.set()
    gevent.get_hub().loop.run_callback(callback)
    assert done.wait(5)


def test_started_from_the_loop_the_greenlet_runs_before_the_loop_goes_on():
    order = []
    pool = StartNowPool()

    def start():
        pool.spawn(order.append, "greenlet")
        order.append("loop")
    from_the_loop(start)
    assert order == ["greenlet", "loop"]
    pool.join(timeout=5)
    assert len(pool) == 0  # tracked, and gone once finished


def test_started_from_a_greenlet_it_waits_for_the_loop():
    order = []
    pool = StartNowPool()
    pool.spawn(order.append, "greenlet")
    order.append("caller")
    pool.join(timeout=5)
    assert order == ["caller", "greenlet"]


def loop_turns_to_begin(pool, n=200, busy=0.0002):
    """Start n greenlets from the loop, each busy ~0.2 ms before it first waits
    (as a new connection's first request); how many loop turns they took to begin."""
    turns = [0]
    counter = gevent.get_hub().loop.prepare()  # runs once per loop turn, before polling
    counter.start(lambda: turns.__setitem__(0, turns[0] + 1))
    began = []

    def connection():
        began.append(turns[0])
        end = time.perf_counter() + busy
        while time.perf_counter() < end:
            pass
        gevent.sleep(0)

    try:
        from_the_loop(lambda: [pool.spawn(connection) for _ in range(n)])
        assert pool.join(timeout=10)
    finally:
        counter.stop()
        counter.close()
    assert len(began) == n
    return max(began) - min(began) + 1


def test_a_burst_of_new_connections_begins_in_one_loop_turn():
    assert loop_turns_to_begin(StartNowPool()) == 1


def test_gevents_own_pool_spreads_the_same_burst_over_loop_turns():
    """The control: what StartNowPool is for (gevent runs queued starts for at
    most the switch interval, 5 ms, per turn: 200 x 0.2 ms needs several)."""
    assert loop_turns_to_begin(Pool()) > 1


@pytest.mark.parametrize("pool_class", [StartNowPool, Pool])
def test_an_error_in_a_started_greenlet_stays_in_it(pool_class):
    pool = pool_class()
    results = []

    def start():
        pool.spawn(lambda: 1 / 0)
        results.append("loop went on")
    from_the_loop(start)  # gevent prints the greenlet's ZeroDivisionError
    pool.join(timeout=5)
    assert results == ["loop went on"]
