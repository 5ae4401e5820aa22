"""The process's runtime settings: the collector on its slower schedule still reclaims cycles."""

import gc
import weakref

import pytest

from geproxy.resources import GC_THRESHOLDS, raise_open_files_limit, schedule_gc


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    def __init__(self):
        self.me = self


def test_schedule_gc_still_collects_cycles_on_its_own(restored_gc):
    schedule_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # start-up objects are no longer scanned
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    keep = []
    for _ in range(50):  # bounded: 50 x 1,000 net allocations, five young thresholds
        keep.extend([] for _ in range(1000))
        if gone() is None:
            break
    assert gone() is None, "a reference cycle outlived 50,000 allocations"


def test_schedule_gc_runs_the_young_generation_less_often(restored_gc):
    schedule_gc()
    before = gc.get_stats()[0]["collections"]
    keep = [[] for _ in range(GC_THRESHOLDS[0] // 2)]
    assert gc.get_stats()[0]["collections"] == before, "collected before the threshold"
    keep.extend([] for _ in range(GC_THRESHOLDS[0]))
    assert gc.get_stats()[0]["collections"] > before


def test_open_files_limit_is_raised_to_the_hard_limit():
    import resource
    soft, hard = raise_open_files_limit()
    assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or soft == hard
