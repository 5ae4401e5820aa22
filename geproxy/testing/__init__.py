"""geproxy.testing: a real local etcd cluster, and the proxy as a process, for tests and runs.

The harness behind geproxy's own tests, its benchmarks and ``make run``
(``python -m geproxy.testing``), usable by anyone who wants a real etcd
3.4/3.5 cluster on loopback in their own tests::

    from geproxy.testing import LocalCluster, v2_put

    with LocalCluster(size=3) as cluster:          # random loopback ports, tmpfs data
        v2_put(cluster.client_urls[0], "hello", "world")
        cluster.kill(cluster.leader_index())       # and pause, restart, add_member ...

Modules, one job each:

* ``cluster``: LocalCluster and Member, the etcd processes;
* ``tlsfiles``: ClusterTLS, members with https client and peer URLs;
* ``proxy``: ProxyProcess, ``python -m geproxy`` as a child process;
* ``process``: owned child processes, started, signalled and reaped by pid only;
* ``metrics``: a member's own counters from its /metrics;
* ``procfs``: CPU, memory, children and TCP sockets of a process, from /proc;
* ``net``: free ports, small HTTP calls, the loopback guard;
* ``rawhttp``: responses read off a raw socket exactly as they arrived;
* ``wrk``: wrk's summary as numbers.

Only the standard library and prometheus_client are used, with blocking
calls gevent can patch: it works with or without ``monkey.patch_all()``.
"""

from geproxy.testing.cluster import LocalCluster, Member
from geproxy.testing.metrics import (metric_value, parse_metrics, read_metrics,
                                     settled_store_watchers, store_watchers)
from geproxy.testing.net import free_port, http, http_json, loopback_url, v2_put
from geproxy.testing.process import OwnedProcess, etcd_env, reap, scratch_dir, spawn, tail
from geproxy.testing.proxy import ProxyProcess
from geproxy.testing.tlsfiles import ClusterTLS

__all__ = ["LocalCluster", "Member", "ClusterTLS", "ProxyProcess", "OwnedProcess",
           "free_port", "http", "http_json", "loopback_url", "v2_put", "metric_value",
           "parse_metrics", "read_metrics", "store_watchers", "settled_store_watchers",
           "etcd_env", "reap", "scratch_dir", "spawn", "tail"]
