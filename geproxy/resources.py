"""geproxy.resources: what the proxy process asks of its runtime before it serves.

* The soft open-files limit is raised to the hard one: every client
  connection is a descriptor, and each watch that is not shared another.
* The cyclic garbage collector runs on a slower schedule (``schedule_gc``).
  Its young-generation count is allocations minus frees, clamped at zero, so
  with a thousand requests in flight (their objects outlive a collection and
  are freed into an older generation) it climbs steadily although the proxy
  makes no garbage: at wrk -c1000 CPython ran ~40 young collections a second,
  5 % of the process's CPU (~4 µs per request, bench/README.md). At 50
  connections it hardly ran at all.
"""

import gc
import logging

log = logging.getLogger("geproxy.resources")

GC_THRESHOLDS = (10000, 10, 10)  # CPython's default is (700, 10, 10)


def raise_open_files_limit():
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) now in force.

    Each client connection costs a descriptor, and each watch that is not
    shared another one upstream.  An unlimited hard limit is taken as the
    kernel's per-process ceiling (/proc/sys/fs/nr_open).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def schedule_gc():
    """Freeze what start-up made (modules, settings: never garbage, and
    never scanned again) and collect the young generation after 10,000 net
    allocations instead of 700.  Cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
