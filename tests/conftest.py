"""Shared fixtures: a real 3-member etcd cluster and proxies in front of it.

Monkey-patching comes first, as in the entry point, so that in-process
servers, requests and the test code all cooperate under gevent.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

from geproxy.testing import LocalCluster, ProxyProcess  # noqa: E402
from tests.helpers import session  # noqa: E402

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch):
    """Stray proxy variables must never route loopback test traffic."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="session")
def cluster():
    """One real 3-member etcd 3.4 cluster (v2 enabled) for the whole session."""
    with LocalCluster(size=3) as c:
        yield c


@pytest.fixture(scope="session", params=["native", "requests"])
def proxy(cluster, tmp_path_factory, request):
    """A readwrite proxy process in front of the session cluster, once per transport."""
    p = ProxyProcess(cluster.initial_cluster, args=["--proxy-transport", request.param],
                     data_dir=str(tmp_path_factory.mktemp("proxy-" + request.param)))
    p.start(endpoints=len(cluster.members))
    yield p
    p.stop()


@pytest.fixture(scope="session")
def readonly_proxy(cluster, tmp_path_factory):
    p = ProxyProcess(cluster.initial_cluster, args=["--proxy", "readonly"],
                     data_dir=str(tmp_path_factory.mktemp("roproxy")))
    p.start(endpoints=len(cluster.members))
    yield p
    p.stop()


@pytest.fixture
def start_proxy(tmp_path):
    """Factory for proxies with their own flags; each is stopped by pid afterwards.

    Keyword arguments go to ProxyProcess (env, listen_url, context...).
    """
    started = []

    def start(initial_cluster, args=(), endpoints=1, **kwargs):
        p = ProxyProcess(initial_cluster, args=list(args),
                         data_dir=str(tmp_path / ("proxy%d" % len(started))), **kwargs)
        started.append(p)
        p.start(endpoints=endpoints)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def http():
    """A requests session that ignores the environment (no proxies, no netrc)."""
    s = session()
    yield s
    s.close()


@pytest.fixture
def key():
    """A key prefix no other test uses, so tests can share the cluster."""
    return "/v2/keys/t%s" % uuid.uuid4().hex[:12]


def pytest_report_header(config):
    return "etcd: %s" % os.popen("etcd --version 2>/dev/null | head -1").read().strip()
