"""Helpers shared by the tests: waiting with a deadline, running the CLI, member counters."""

import os
import subprocess
import sys
import time

import gevent
import pytest
import requests

from geproxy.testing import etcd_env, settled_store_watchers, store_watchers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "geproxy"]
# What a check may raise while the thing it waits for is not there yet.
TRANSIENT = (OSError, requests.RequestException, ValueError)


def poll(check, timeout=5.0, interval=0.05, errors=(), what=None):
    """Call check() until it returns something truthy or timeout passes; its last value.

    Exceptions of the types in ``errors`` count as a falsy answer. With
    ``what``, running out of time fails the test, naming what was awaited
    and the last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except errors as exc:
            value = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            if what is not None:
                pytest.fail("timed out after %.0fs waiting for %s; last: %r"
                            % (timeout, what, value))
            return None if isinstance(value, BaseException) else value
        gevent.sleep(interval)


def cli_env(**extra):
    """The proxy's environment: ours without ETCD_*, this checkout first on PYTHONPATH,
    then ``extra``."""
    env = etcd_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_cli(args, timeout=20, **env):
    """Run ``python -m geproxy ARGS`` to its exit: a CompletedProcess with text output."""
    return subprocess.run(CLI + list(args), cwd=REPO, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def watchers(cluster):
    """Current v2 watchers over all members, from their own /metrics."""
    return store_watchers(cluster.members)


def settled_watchers(cluster, timeout=5.0):
    """The members' watcher count once it stopped moving (earlier tests' watches gone)."""
    return settled_store_watchers(cluster.members, timeout)


def session():
    """A requests session that ignores the environment (no proxies, no netrc)."""
    s = requests.Session()
    s.trust_env = False
    return s


def sessions(n):
    """n independent sessions (one keep-alive connection each)."""
    return [session() for _ in range(n)]
