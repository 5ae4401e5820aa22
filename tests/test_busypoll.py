"""The event loop polls while its recent waits were shorter than the window, for at
most the window each time, and sleeps at once after long waits."""

import time

import gevent
import pytest

from geproxy.busypoll import THRESHOLD, BusyPoll

WINDOW = 0.01  # seconds
SHORT = 0.001  # a wait that polling would catch
LONG = 0.05  # one it would not


@pytest.fixture
def busy_poll():
    poll = BusyPoll(WINDOW)
    poll.start()
    yield poll
    poll.stop()


def cpu_during_sleep(seconds):
    before = time.process_time()
    gevent.sleep(seconds)
    return time.process_time() - before


def sleep_until(poll, seconds, done, most=200):
    """Sleep ``seconds`` at a time until ``done(poll)``; bounded to ``most`` sleeps."""
    for _ in range(most):
        if done(poll):
            return True
        gevent.sleep(seconds)
    return done(poll)


def test_short_waits_turn_polling_on(busy_poll):
    assert busy_poll.score < THRESHOLD  # it starts off
    assert sleep_until(busy_poll, SHORT, lambda p: p.score >= THRESHOLD)
    before = busy_poll.polls
    gevent.sleep(SHORT)
    assert busy_poll.polls > before, "the loop slept instead of polling"


def test_a_poll_ends_after_the_window(busy_poll):
    assert sleep_until(busy_poll, SHORT, lambda p: p.score >= THRESHOLD)
    cpu = cpu_during_sleep(0.3)
    assert cpu < 0.1, "the loop kept polling for %.3f s of a 0.3 s sleep" % cpu


def test_long_waits_turn_polling_off(busy_poll):
    assert sleep_until(busy_poll, SHORT, lambda p: p.score >= THRESHOLD)
    assert sleep_until(busy_poll, LONG, lambda p: p.score < THRESHOLD, most=60)
    before = busy_poll.polls
    gevent.sleep(LONG)
    assert busy_poll.polls == before, "the loop polled after long waits"


def test_stop_ends_polling(busy_poll):
    assert sleep_until(busy_poll, SHORT, lambda p: p.score >= THRESHOLD)
    busy_poll.stop()
    stopped_at = busy_poll.polls
    gevent.sleep(SHORT)
    assert busy_poll.polls == stopped_at


def test_a_zero_window_never_polls():
    poll = BusyPoll(0)
    poll.start()
    for _ in range(50):
        gevent.sleep(SHORT)
    assert poll.polls == 0
    poll.stop()


def test_started_from_inside_a_loop_turn(capfd):
    """As in the proxy, where start() runs in a greenlet the loop's callbacks switch to."""
    poll = BusyPoll(WINDOW)
    gevent.get_hub().loop.run_callback(poll.start)
    try:
        assert sleep_until(poll, SHORT, lambda p: p.score >= THRESHOLD)
    finally:
        poll.stop()
    assert "Traceback" not in capfd.readouterr().err
