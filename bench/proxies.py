"""The proxies under test: ours in the variants this checkout supports, and the Go proxy.

Both are geproxy.testing.ProxyProcess objects: started on a free loopback
port, waited for until they list the members, stopped by pid.
"""

import importlib.util

from harness import log
from geproxy import settings, values
from geproxy.testing import ProxyProcess, etcd_env


def proxy_features():
    """(transports, default transport, workers supported) of this checkout.

    Read from geproxy itself so the bench follows the code: a transport or
    --workers that this checkout lacks is skipped with a note, not an error.
    """
    transports = tuple(values.TRANSPORTS)
    default = next((s.default for s in settings.SETTINGS if s.name == "proxy-transport"),
                   transports[0])
    workers = (any(s.name == "workers" for s in settings.SETTINGS)
               and importlib.util.find_spec("geproxy.workers") is not None)
    return transports, default, workers


def pick_matrix(transports_opt, workers_opt):
    """[(transport, workers)] asked for, minus what this checkout cannot run."""
    have, default, have_workers = proxy_features()
    asked_t = [t.strip() for t in transports_opt.split(",") if t.strip()] if transports_opt \
        else [default]
    asked_w = [int(w) for w in workers_opt.split(",") if w.strip()]
    transports = []
    for t in asked_t:
        if t in have:
            transports.append(t)
        else:
            log("note: --proxy-transport %s is not in this checkout (has: %s); skipped"
                % (t, ", ".join(have)))
    workers = []
    for w in asked_w:
        if w > 1 and not have_workers:
            log("note: --workers %d needs geproxy.workers, not in this checkout; skipped" % w)
        else:
            workers.append(w)
    if not transports:
        transports = [default]
        log("note: falling back to the default transport %r" % default)
    return [(t, w) for t in transports for w in workers or [1]]


def proxy_args(transport=None, workers=1, balance=None, pipeline=None):
    """Our flags for one variant (quiet logs: a log line per request would cost CPU)."""
    args = ["--log-level", "warn"]
    if transport:
        args += ["--proxy-transport", transport]
    if proxy_features()[2]:
        args += ["--workers", str(workers)]
    if balance:
        args += ["--proxy-balance", balance]
    if pipeline is not None:
        args += ["--proxy-pipeline", str(pipeline)]
    return args


def start_ours(initial_cluster, args, endpoints, tls=None):
    """Our proxy as a subprocess, waiting until it lists `endpoints` members and, with
    ``--workers`` N in ``args``, until each of its N workers serves (a burst of clients
    right after start could otherwise meet one worker); with ``tls`` (a
    certs.BenchTLS) on an https listener toward https members."""
    if tls is not None:
        proxy = ProxyProcess(initial_cluster, args=args + tls.proxy_args(),
                             env=tls.proxy_env(), context=tls.context())
    else:
        proxy = ProxyProcess(initial_cluster, args=args)
    proxy.start(endpoints=endpoints, timeout=30.0)
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    if workers > 1:
        proxy.wait_workers(workers)
    return proxy


class GoProxy(ProxyProcess):
    """``etcd --proxy on`` as a child process, with ProxyProcess's interface (and the
    same TLS flags as ours with ``tls``)."""

    def __init__(self, initial_cluster, etcd_bin="etcd", args=(), tls=None):
        if tls is not None:
            super().__init__(initial_cluster, args=list(args) + tls.proxy_args(),
                             env=tls.proxy_env(), context=tls.context())
        else:
            super().__init__(initial_cluster, args=args)
        self.etcd_bin = etcd_bin

    def command(self):
        return [self.etcd_bin, "--proxy", "on", "--listen-client-urls", self.url,
                "--initial-cluster", self.initial_cluster, "--data-dir", self.data_dir,
                *self.args]

    def environ(self):
        return dict(etcd_env(), **self.env)
