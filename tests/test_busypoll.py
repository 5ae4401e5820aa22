"""The event loop polls for a window after an event, then sleeps; an event restarts it."""

import time

import gevent
import pytest

from geproxy.busypoll import BusyPoll

WINDOW = 0.005  # seconds


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


def test_the_loop_polls_then_sleeps_once_the_window_has_passed(busy_poll):
    cpu = cpu_during_sleep(0.3)
    assert busy_poll.polls > 0, "the loop never polled"
    assert cpu < 0.1, "the loop kept polling for %.3f s of a 0.3 s sleep" % cpu


def test_an_event_restarts_polling(busy_poll):
    cpu_during_sleep(0.05)  # polls, then sleeps until the timer
    after_first = busy_poll.polls
    cpu = cpu_during_sleep(0.05)  # the timer that ended the first sleep restarted it
    assert busy_poll.polls > after_first
    assert cpu < 0.04


def test_stop_ends_polling(busy_poll):
    busy_poll.stop()
    stopped_at = busy_poll.polls
    gevent.sleep(0.02)
    assert busy_poll.polls == stopped_at


def test_a_zero_window_never_polls():
    poll = BusyPoll(0)
    poll.start()
    gevent.sleep(0.02)
    assert poll.polls == 0
    poll.stop()
