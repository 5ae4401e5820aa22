"""CPU used on this machine by processes that are not the bench's, over an interval.

A shared box's other users show up as cores kept busy; a run with a high
figure is a noisy run, and the throughput table says so in a column.
"""

import os
import time

from geproxy.testing.procfs import cpu_seconds, machine_busy_seconds


class ForeignLoad:
    """Started at creation; cores() is the average number of cores others kept busy since.

    Ours = this process and every descendant (members, proxies, wrk), live or
    reaped.
    """

    def __init__(self):
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_seconds()
        self.ours0 = cpu_seconds(os.getpid(), descendants=True)

    def cores(self):
        wall = time.monotonic() - self.t0
        busy = machine_busy_seconds() - self.busy0
        ours = cpu_seconds(os.getpid(), descendants=True) - self.ours0
        return max(0.0, busy - ours) / wall if wall > 0 else 0.0
