"""The proxy as a child process (``python -m geproxy``), as tests and ``make run`` start it.

Running the real entry point in its own process, rather than in-process,
exercises flag parsing, monkey-patching and signal handling exactly as in
production, and lets a test stop, pause or kill it by pid.
"""

import atexit
import http.client
import os
import shutil
import sys
import time
import urllib.parse

import geproxy
from geproxy.testing.net import free_port, http_json, loopback_url
from geproxy.testing.process import OwnedProcess, etcd_env, scratch_dir
from geproxy.testing.procfs import children, holder

__all__ = ["ProxyProcess"]

# The directory holding the geproxy package: the child imports this very checkout.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(geproxy.__file__)))


class ProxyProcess(OwnedProcess):
    """One ``python -m geproxy`` process listening on a loopback URL.

    initial_cluster None leaves --initial-cluster out (with --discovery it
    would be a conflict). args come last on the command line, so they can
    override ours; env is applied over an environment without ETCD_* variables.
    Output goes to log_path (default: next to the data dir), or to our
    terminal with inherit_output. With context (an ssl.SSLContext: the CA to
    trust, a client certificate) the URL picked is https and the harness talks
    to the proxy with that context; args must then give the TLS flags.
    package_root is the folder holding the geproxy package the child runs
    (default: this checkout; bench/ab.py runs two revisions side by side): it
    is the child's working directory, which ``python -m`` imports from first.
    """

    def __init__(self, initial_cluster, args=(), env=None, data_dir=None, listen_url=None,
                 log_path=None, inherit_output=False, context=None, package_root=PACKAGE_ROOT):
        self.initial_cluster = initial_cluster
        self.package_root = package_root
        self.args = list(args)
        self.env = dict(env or {})
        self.context = context
        self._own_listen = listen_url is None
        self.url = loopback_url((listen_url or self._fresh_url()).rstrip("/"))
        self._tmp = None
        if data_dir is None:
            self._tmp = scratch_dir("geproxy-proxy-")
            data_dir = os.path.join(self._tmp, "proxy-data")
        self.data_dir = data_dir
        if log_path is None and not inherit_output:
            # Next to, not inside, the data dir: that belongs to the proxy.
            log_path = data_dir.rstrip(os.sep) + ".log"
        self.log_path = log_path

    def _fresh_url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.context is not None else "http",
                                      free_port())

    @property
    def port(self):
        return urllib.parse.urlsplit(self.url).port

    def __repr__(self):
        return "<ProxyProcess %s pid=%s alive=%s>" % (self.url, self.pid, self.alive)

    def command(self):
        cluster = [] if self.initial_cluster is None else \
            ["--initial-cluster", self.initial_cluster]
        return [sys.executable, "-m", "geproxy", "--listen-client-urls", self.url, *cluster,
                "--data-dir", self.data_dir, *self.args]

    def environ(self):
        """The child's environment: ours without ETCD_*, PYTHONPATH to its
        package root, then the caller's variables."""
        env = etcd_env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.package_root, env.get("PYTHONPATH")) if p)
        env.update(self.env)
        return env

    def start(self, endpoints=1, timeout=30.0):
        """Spawn the proxy and wait until /v2/config/local/proxy lists at least
        `endpoints` endpoints. Retries on a fresh port if ours was taken
        meanwhile. On failure the process is killed and RuntimeError carries
        the end of its log."""
        deadline = time.monotonic() + timeout
        for _attempt in range(3):
            self.spawn(self.command(), env=self.environ(), cwd=self.package_root)
            atexit.register(self.stop)
            try:
                self.wait_endpoints(endpoints, max(0.0, deadline - time.monotonic()))
                return self
            except RuntimeError as e:
                err = e
            self.kill()
            clash = self._own_listen and "in use" in self.tail(50)
            if not clash or time.monotonic() >= deadline:
                break
            self.url = self._fresh_url()
        raise err

    def endpoints(self, timeout=2.0):
        """The endpoint URLs the proxy currently considers available."""
        status, body = http_json("GET", self.url + "/v2/config/local/proxy", timeout=timeout,
                                 context=self.context)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError("/v2/config/local/proxy: %s %r" % (status, body))
        return list(body.get("endpoints") or [])

    def wait_endpoints(self, n=1, timeout=30.0):
        """Wait until the proxy lists at least n endpoints; return them."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if not self.alive:
                raise RuntimeError("proxy exited with code %s\n%s"
                                   % (self.returncode, self.tail()))
            try:
                eps = self.endpoints(timeout=1.0)
                if len(eps) >= n:
                    return eps
                last = "endpoints %s" % (eps,)
            except (OSError, RuntimeError) as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                raise RuntimeError("proxy at %s did not list %d endpoint(s) within %.1fs; "
                                   "last: %s\n%s" % (self.url, n, timeout, last, self.tail()))
            time.sleep(0.05)

    def connection(self, timeout=5.0):
        """A keep-alive ``http.client`` connection to the proxy (https with ``context``)."""
        split = urllib.parse.urlsplit(self.url)
        if split.scheme == "https":
            return http.client.HTTPSConnection(split.hostname, split.port, timeout=timeout,
                                               context=self.context)
        return http.client.HTTPConnection(split.hostname, split.port, timeout=timeout)

    def wait_workers(self, count, timeout=30.0, most=1000):
        """Wait until each of the proxy's ``count`` worker processes (--workers) serves a
        connection; return their pids.

        Why: a worker accepts only once it has read the member list (up to a few
        seconds after start), and until then its siblings take every connection,
        so a burst right after ``start`` can meet one worker.  Keep-alive
        connections are opened one after the other and held, so that the
        workers' board hands the next one to a worker that holds fewer once that
        one serves, until every worker holds one (at most ``most``); then they
        are closed.
        """
        deadline = time.monotonic() + timeout
        while len(children(self.pid)) < count:
            if time.monotonic() >= deadline or not self.alive:
                raise RuntimeError("proxy at %s has %d of %d workers after %.1fs\n%s"
                                   % (self.url, len(children(self.pid)), count, timeout,
                                      self.tail()))
            time.sleep(0.05)
        workers = children(self.pid)
        held, seen = [], set()
        try:
            while not seen >= set(workers):
                if time.monotonic() >= deadline or len(held) >= most:
                    raise RuntimeError("proxy at %s: %d of %d workers served %d connections"
                                       % (self.url, len(seen - {None}), count, len(held)))
                conn = self.connection()
                held.append(conn)
                conn.request("GET", "/v2/config/local/proxy")
                conn.getresponse().read()
                seen.add(holder(conn.sock, workers))
        finally:
            for conn in held:
                conn.close()
        return workers

    def stop(self, timeout=5.0):
        """SIGTERM (the proxy shuts down cleanly), SIGKILL after timeout; remove
        our temp dir if we made one. Idempotent; the exit code (None if never
        started)."""
        atexit.unregister(self.stop)
        code = super().stop(timeout=timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
