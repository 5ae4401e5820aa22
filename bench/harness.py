"""What every bench script needs first: geproxy importable, where results go, progress
lines, and SIGTERM handled like Ctrl-C.

The scripts run as ``python bench/<script>.py``: Python puts bench/ first on
sys.path (so they import these modules), and importing this one puts the
repository root second, so that ``geproxy`` imports without an install.
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

OUT_DIR = os.path.join(HERE, "out")  # raw results, git-ignored
BENCH_KEY = "bench/key"


def log(message):
    """Progress lines go to stderr, so that stdout holds only the tables."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process by pid."""
    signal.signal(signal.SIGTERM, _interrupt)
