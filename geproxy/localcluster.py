"""Start and control a real local etcd 3.4 cluster on loopback.

Used by the test-suite fixtures, by the benchmarks and by ``make run``
(``python -m geproxy.localcluster``), so the proxy is always exercised
against real etcd members rather than a fake.

Only the standard library is used, and only blocking calls that gevent
knows how to patch (subprocess, socket, urllib, time.sleep): the module
therefore behaves the same with or without ``gevent.monkey.patch_all()``.

Processes are tracked and signalled strictly by pid; nothing here ever
looks processes up by name, so parallel test runs cannot hurt each other.
"""

import argparse
import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["free_port", "Member", "LocalCluster", "ProxyProcess", "main"]

# urllib honours http_proxy/HTTP_PROXY from the environment; a developer's
# proxy settings must never intercept our loopback traffic, so use an opener
# without any ProxyHandler.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host="127.0.0.1"):
    """Return a TCP port that was free a moment ago (bind to port 0).

    There is an unavoidable window between closing this socket and etcd
    binding the port; LocalCluster.start() retries with fresh ports if a
    member dies with "address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http(method, url, data=None, headers=None, timeout=2.0):
    """Do one HTTP request; return (status, body bytes). HTTP errors are
    returned, not raised, because etcd uses 4xx/5xx bodies meaningfully."""
    req = urllib.request.Request(url, data=data, method=method,
                                 headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return e.code, body


def _http_json(method, url, payload=None, timeout=2.0):
    data = headers = None
    if payload is not None:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
    status, body = http(method, url, data, headers, timeout)
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body


def v2_put(client_url, key, value, timeout=2.0):
    data = urllib.parse.urlencode({"value": value}).encode()
    return http("PUT", f"{client_url}/v2/keys/{key.lstrip('/')}", data,
                 {"Content-Type": "application/x-www-form-urlencoded"},
                 timeout)


def loopback_url(url):
    """Refuse anything that would make etcd listen beyond loopback."""
    host = urllib.parse.urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1") and \
            not (host or "").startswith("127."):
        raise ValueError(f"only loopback URLs are allowed, got {url!r}")
    return url


def _parse_prometheus(text):
    """Parse Prometheus text exposition into {"name{labels}": value}.

    Keys keep the labels exactly as etcd prints them so callers can look
    up e.g. 'etcd_http_received_total{method="GET"}' literally.
    """
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line.split(None, 1)[0]:
            # Label values may contain spaces; the key ends at the last '}'.
            end = line.rindex("}") + 1
            key, rest = line[:end], line[end:]
        else:
            key, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            out[key] = float(fields[0])
        except ValueError:
            continue
    return out


# -- die-with-parent ---------------------------------------------------------
# If the Python process is SIGKILLed (a test-runner timeout, say) nobody calls
# close(), and etcd members would live on forever.  On Linux we ask the kernel
# to SIGKILL each child when its parent dies.  Caveat: the kernel ties this to
# the *thread* that forked, so start clusters from a long-lived thread (pytest
# and gevent both use the main thread).
try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" \
        else None
    _prctl = _libc.prctl if _libc is not None else None
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _child_setup_factory():
    if _prctl is None:
        return None
    parent = os.getpid()

    def setup():
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # parent already died before prctl
            os._exit(1)
    return setup


def spawn(cmd, log_path, env=None):
    """Start a child in its own session (so a terminal Ctrl-C reaches only
    us, and we decide how to stop it) with output appended to log_path.
    Never a PIPE: nobody would read it and the child would block."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=env, start_new_session=True,
            preexec_fn=_child_setup_factory())


def wait_proc(proc, timeout):
    """Wait for proc; SIGKILL it if it outlives timeout. Always reaps."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(data.splitlines()[-lines:])


def etcd_env():
    """The environment without ETCD_*/ETCDCTL_* variables: etcd reads
    ETCD_* as flags, and a stray one from the developer's shell would
    silently change the cluster we think we are starting."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ETCD_", "ETCDCTL_"))}


class OwnedProcess:
    """A process this module started (``proc``), known and signalled only by pid."""

    proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self):
        """True while the process exists (even when paused)."""
        return self.proc is not None and self.proc.poll() is None


class Member(OwnedProcess):
    """One etcd process of a LocalCluster."""

    def __init__(self, name, client_url, peer_url, data_dir, log_path,
                 initial_cluster="", initial_cluster_state="new"):
        self.name = name
        self.client_url = client_url
        self.peer_url = peer_url
        self.data_dir = data_dir
        self.log_path = log_path
        # Only consulted by etcd on the very first start (empty data dir);
        # kept so restart() can rebuild an identical command line.
        self.initial_cluster = initial_cluster
        self.initial_cluster_state = initial_cluster_state
        self.proc = None
        self.paused = False

    def __repr__(self):
        return (f"<Member {self.name} client={self.client_url} "
                f"peer={self.peer_url} pid={self.pid} alive={self.alive}>")

    def metrics(self, timeout=5.0):
        """GET /metrics and return {metric-with-labels: value}."""
        status, body = http("GET", f"{self.client_url}/metrics",
                             timeout=timeout)
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics returned {status}")
        return _parse_prometheus(body.decode("utf-8", "replace"))

    def metric(self, name, default=0.0):
        """One metric value; default when etcd has not exported it yet
        (labelled counters only appear after their first increment)."""
        return self.metrics().get(name, default)

    def tail(self, lines=25):
        return tail(self.log_path, lines)


def store_watchers(members):
    """Current v2 watchers over the given members, from their own /metrics."""
    return int(sum(m.metric("etcd_debugging_store_watchers") for m in members))


def settled_store_watchers(members, timeout=5.0, interval=0.05):
    """store_watchers() once it stopped moving (watches that ended earlier are gone):
    the same figure three polls in a row, or whatever it is at the deadline."""
    deadline = time.monotonic() + timeout
    last, same = store_watchers(members), 0
    while same < 3 and time.monotonic() < deadline:
        time.sleep(interval)
        now = store_watchers(members)
        same = same + 1 if now == last else 0
        last = now
    return last


def default_base_dir():
    """Prefer tmpfs: etcd fsyncs its WAL on every write, which on a real
    disk makes cluster start and every test write much slower."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return tempfile.mkdtemp(prefix="geproxy-etcd-", dir=shm)
    return tempfile.mkdtemp(prefix="geproxy-etcd-")


class LocalCluster:
    """A real etcd cluster of `size` members on loopback, with random ports.

    Use as a context manager, or call start() and close() yourself.
    close() is also registered with atexit as a safety net.
    """

    READY_KEY = "_geproxy_ready"

    def __init__(self, size=3, host="127.0.0.1", base_dir=None,
                 etcd_bin="etcd", token=None):
        loopback_url(f"http://{host}")
        self.size = size
        self.host = host
        self.etcd_bin = etcd_bin
        # A unique token keeps members of concurrently running clusters
        # from ever accepting each other's peer traffic.
        self.token = token or f"geproxy-{os.getpid()}-{secrets.token_hex(4)}"
        self._owns_base_dir = base_dir is None
        self.base_dir = base_dir or default_base_dir()
        os.makedirs(self.base_dir, exist_ok=True)
        self.members = []
        self._all_members = []  # every Member ever created, for close()
        self._next_index = 0
        self._used_ports = set()
        self._started = False
        self._closed = False
        for _ in range(size):
            self.members.append(self._new_member())
        atexit.register(self.close)

    # -- addresses ------------------------------------------------------------
    @property
    def client_urls(self):
        return [m.client_url for m in self.members]

    @property
    def peer_urls(self):
        return [m.peer_url for m in self.members]

    @property
    def initial_cluster(self):
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _url(self):
        """A fresh loopback URL. Two free_port() calls can return the same
        port (the first socket is closed again), so never hand out a port
        twice within this cluster."""
        for _ in range(100):
            port = free_port(self.host)
            if port not in self._used_ports:
                self._used_ports.add(port)
                return f"http://{self.host}:{port}"
        raise RuntimeError("could not find a free port")

    def _new_member(self, name=None):
        idx = self._next_index
        self._next_index += 1
        name = name or f"m{idx}"
        m = Member(
            name=name,
            client_url=self._url(),
            peer_url=self._url(),
            data_dir=os.path.join(self.base_dir, f"{name}.etcd"),
            log_path=os.path.join(self.base_dir, f"{name}.log"))
        self._all_members.append(m)
        return m

    def _live(self, members=None):
        """Members that are running and not paused: the ones that can
        answer HTTP without hanging until the timeout."""
        members = self.members if members is None else members
        return [m for m in members if m.alive and not m.paused]

    # -- process control ------------------------------------------------------
    def _command(self, m):
        return [
            self.etcd_bin,
            "--name", m.name,
            "--data-dir", m.data_dir,
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", getattr(m, "advertised_url", None) or m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", m.initial_cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", m.initial_cluster_state,
            "--enable-v2=true",
            # With the default strict check, etcd rejects member add/remove
            # (HTTP 500) until the receiving member has been connected to
            # every peer for 5 s, i.e. for 5 s after any start or restart.
            "--strict-reconfig-check=false",
            # Fast elections so kill/pause tests converge in well under 1s.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", m.log_path,
        ]

    def _spawn_member(self, m):
        if self._closed:
            raise RuntimeError("cluster is closed")
        # etcd's zap logger and our stdout/stderr redirection both append to
        # the same file (O_APPEND), so one log holds early panics too.
        m.proc = spawn(self._command(m), m.log_path, env=etcd_env())
        m.paused = False

    def _logs(self, members=None):
        members = self.members if members is None else members
        return "\n".join(
            f"--- {m.name} (pid {m.pid}, rc "
            f"{m.proc.poll() if m.proc else None}) {m.log_path}\n{m.tail()}"
            for m in members)

    def start(self, timeout=60.0):
        """Start every member and wait until the cluster serves v2 writes.

        If a member dies because the port free_port() picked was grabbed
        in the meantime, retry (twice) with fresh ports and data dirs.
        Calling start() again (e.g. inside ``with LocalCluster() as c``,
        whose __enter__ already started it) is a no-op.
        """
        if self._started:
            return self
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            for m in self.members:
                m.initial_cluster = self.initial_cluster
                m.initial_cluster_state = "new"
            try:
                for m in self.members:
                    self._spawn_member(m)
                # Explicit members: the default (live ones only) would
                # skip a member that already crashed and call it success.
                self.wait_healthy(timeout=max(0.0, deadline - time.monotonic()),
                                  members=self.members)
                self._started = True
                return self
            except RuntimeError as e:
                err = e
                port_clash = any(
                    "address already in use" in m.tail(200)
                    for m in self.members if not m.alive)
            except BaseException:  # etcd missing, Ctrl-C, ...
                for m in self.members:
                    self._stop_member(m)
                raise
            for m in self.members:
                self._stop_member(m)
            if not port_clash or attempt == 2 or time.monotonic() > deadline:
                break
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
                os.replace(m.log_path, m.log_path + f".attempt{attempt}")
                m.client_url, m.peer_url = self._url(), self._url()
        raise err

    def wait_healthy(self, timeout=30.0, members=None):
        """Wait until each given member (default: every running, unpaused
        member) reports {"health":"true"} on /health and accepts a v2 PUT.

        /health alone can be true a moment before a member can forward
        proposals, so the PUT is what really proves the member is usable.
        Fails fast if one of the members exits.
        """
        members = self._live() if members is None else list(members)
        deadline = time.monotonic() + timeout
        pending = list(members)
        last = {}
        while pending:
            for m in list(pending):
                if not m.alive:
                    raise RuntimeError(
                        f"etcd member {m.name} exited with code "
                        f"{m.proc.poll() if m.proc else None}\n"
                        + self._logs(members))
                remaining = deadline - time.monotonic()
                t = max(0.1, min(2.0, remaining))
                try:
                    status, body = _http_json("GET", f"{m.client_url}/health",
                                              timeout=t)
                    if status != 200 or not isinstance(body, dict) or \
                            body.get("health") != "true":
                        last[m.name] = f"/health: {status} {body!r}"
                        continue
                    status, body = v2_put(m.client_url, self.READY_KEY,
                                           m.name, timeout=t)
                    if status not in (200, 201):
                        last[m.name] = f"v2 PUT: {status} {body[:200]!r}"
                        continue
                    pending.remove(m)
                except OSError as e:  # refused, reset, timeout ...
                    last[m.name] = repr(e)
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"etcd members {[m.name for m in pending]} not healthy "
                    f"after {timeout:.1f}s; last errors: {last}\n"
                    + self._logs(members))
            time.sleep(0.05)
        return self

    def kill(self, i, sig=signal.SIGKILL):
        """Send sig to member i by pid, then wait for it to exit (a
        non-KILL signal gets 10 s of grace before SIGKILL)."""
        m = self.members[i]
        if not m.alive:
            return
        os.kill(m.pid, sig)
        if m.paused and sig != signal.SIGKILL:
            os.kill(m.pid, signal.SIGCONT)  # a stopped process can't exit
        wait_proc(m.proc, timeout=10.0)
        m.paused = False

    def pause(self, i):
        """SIGSTOP member i: it keeps its sockets but stops answering,
        like a hung machine (connections hang instead of being refused)."""
        m = self._running(i)
        os.kill(m.pid, signal.SIGSTOP)
        m.paused = True

    def resume(self, i):
        m = self._running(i)
        os.kill(m.pid, signal.SIGCONT)
        m.paused = False

    def _running(self, i):
        # Once a child is reaped its pid may be reused by a stranger:
        # only ever signal a process we know is still ours.
        m = self.members[i]
        if not m.alive:
            raise RuntimeError(f"member {m.name} is not running")
        return m

    def restart(self, i, timeout=30.0, advertise_client_url=None, advertise_only_url=None,
                wait=True):
        """Start member i again on its existing data dir (kill it first if
        still running). etcd ignores the --initial-cluster* flags when the
        data dir exists, so the member rejoins with its old identity.

        With advertise_client_url the member listens on and advertises
        that URL instead; etcd publishes the new client URL via raft, so it
        shows up in /v2/members and the member's client_url is updated.
        With advertise_only_url the member keeps listening on its client URL
        but advertises the other one (a misconfigured member; None clears it).
        wait=False returns at once (restarting a whole stopped cluster needs
        every member up before any is healthy; then call wait_healthy()).
        """
        m = self.members[i]
        self.kill(i)
        if advertise_client_url is not None:
            m.client_url = loopback_url(advertise_client_url.rstrip("/"))
        m.advertised_url = advertise_only_url
        self._spawn_member(m)
        if wait:
            self.wait_healthy(timeout=timeout, members=[m])
        return m

    def leader_index(self, timeout=10.0):
        """Index in self.members of the current leader, asking each live
        member's /v2/stats/self; polls while an election is in progress."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                if not m.alive or m.paused:
                    continue
                try:
                    status, body = _http_json(
                        "GET", f"{m.client_url}/v2/stats/self", timeout=1.0)
                except OSError:
                    continue
                if status == 200 and isinstance(body, dict) and \
                        body.get("state") == "StateLeader":
                    return i
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no leader found within {timeout}s")
            time.sleep(0.05)

    def _any_live_url(self):
        for m in self._live():
            return m.client_url
        raise RuntimeError("no live etcd member")

    def add_member(self, name=None, timeout=60.0):
        """Grow the cluster by one member via the v2 members API, start it
        with --initial-cluster-state existing, wait until it is healthy and
        append it to self.members."""
        deadline = time.monotonic() + timeout
        m = self._new_member(name)
        attempt = 0
        while True:
            try:
                status, body = _http_json(
                    "POST", f"{self._any_live_url()}/v2/members",
                    {"peerURLs": [m.peer_url]}, timeout=5.0)
            except OSError as e:
                status, body = None, repr(e)
            # 409 on a retry: an earlier attempt did get through.
            if status == 201 or (status == 409 and attempt > 0):
                break
            if time.monotonic() >= deadline:
                self._all_members.remove(m)
                raise RuntimeError(
                    f"POST /v2/members failed: {status} {body!r}")
            attempt += 1
            time.sleep(0.2)
        # The new member must be told exactly the current membership (the
        # killed-but-not-removed members included) plus itself.
        m.initial_cluster = ",".join(
            f"{x.name}={x.peer_url}" for x in self.members + [m])
        m.initial_cluster_state = "existing"
        self.members.append(m)
        self._spawn_member(m)
        self.wait_healthy(timeout=max(0.0, deadline - time.monotonic()),
                          members=[m])
        return m

    def remove_member(self, i):
        """Remove member i from the cluster (DELETE /v2/members/<id>), kill
        its process and drop it from self.members (so later indices shift
        down by one). Returns the removed Member."""
        m = self.members[i]
        base = next((x.client_url for x in self._live() if x is not m), None)
        base = base or self._any_live_url()
        status, body = _http_json("GET", f"{base}/v2/members", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"GET /v2/members failed: {status} {body!r}")
        ids = [x["id"] for x in body["members"] if m.peer_url in x["peerURLs"]]
        if not ids:
            raise RuntimeError(f"{m.name} ({m.peer_url}) is not a member")
        status, body = http("DELETE", f"{base}/v2/members/{ids[0]}",
                             timeout=10.0)
        if status != 204:
            raise RuntimeError(f"DELETE /v2/members/{ids[0]} failed: "
                               f"{status} {body!r}")
        self.kill(i)
        self.members.pop(i)
        return m

    # -- teardown -------------------------------------------------------------
    def _stop_member(self, m):
        if m.proc is None or m.proc.poll() is not None:
            return
        for sig in (signal.SIGCONT, signal.SIGKILL):  # CONT: maybe paused
            try:
                os.kill(m.proc.pid, sig)
            except ProcessLookupError:
                pass
        wait_proc(m.proc, timeout=10.0)
        m.paused = False

    def close(self):
        """Kill every process this cluster started (by pid) and remove the
        base dir if we created it. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            for m in self._all_members:
                self._stop_member(m)
        finally:
            atexit.unregister(self.close)
            if self._owns_base_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


# -- the proxy as a child process ------------------------------------------------

class ProxyProcess(OwnedProcess):
    """One ``python -m geproxy`` process, as tests and ``make run`` use it.

    Testing the real entry point as a subprocess (rather than in-process)
    exercises flag parsing, monkey-patching and signal handling exactly as
    in production, and lets tests kill/stop it by pid.
    """

    def __init__(self, initial_cluster, args=(), env=None, data_dir=None,
                 listen_url=None, log_path=None, inherit_output=False):
        self.initial_cluster = initial_cluster
        self.args = list(args)
        self.env = dict(env or {})
        self._own_listen = listen_url is None
        self.url = loopback_url((listen_url or
                                  f"http://127.0.0.1:{free_port()}").rstrip("/"))
        self._tmp = None
        if data_dir is None:
            self._tmp = default_base_dir()
            data_dir = os.path.join(self._tmp, "proxy-data")
        self.data_dir = data_dir
        if log_path is None and not inherit_output:
            # Next to, not inside, the data dir: that belongs to the proxy.
            log_path = data_dir.rstrip(os.sep) + ".log"
        self.log_path = log_path
        self.proc = None

    @property
    def port(self):
        return urllib.parse.urlsplit(self.url).port

    def __repr__(self):
        return f"<ProxyProcess {self.url} pid={self.pid} alive={self.alive}>"

    def command(self):
        # Caller's args last, so they can override ours.  initial_cluster
        # None leaves --initial-cluster out: with --discovery or
        # --discovery-srv setting it is a conflict (exit 1).
        cluster = [] if self.initial_cluster is None else \
            ["--initial-cluster", self.initial_cluster]
        return [sys.executable, "-m", "geproxy",
                "--listen-client-urls", self.url, *cluster,
                "--data-dir", self.data_dir, *self.args]

    def _environ(self):
        # The proxy, like etcd, reads ETCD_* variables as flags: drop the
        # ones inherited from the developer's shell and apply only the
        # caller's. PYTHONPATH makes the child import this very package.
        env = etcd_env()
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        env.update(self.env)
        return env

    def start(self, endpoints=1, timeout=30.0):
        """Spawn the proxy and wait until /v2/config/local/proxy lists at
        least `endpoints` endpoints. Retries on a fresh port if the one we
        picked was taken meanwhile. On failure the process is stopped and
        RuntimeError carries the end of its log."""
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            if self.log_path is None:
                self.proc = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL,
                    env=self._environ(), start_new_session=True,
                    preexec_fn=_child_setup_factory())
            else:
                os.makedirs(os.path.dirname(os.path.abspath(self.log_path)),
                            exist_ok=True)
                self.proc = spawn(self.command(), self.log_path,
                                   env=self._environ())
            atexit.register(self.stop)
            try:
                self.wait_endpoints(endpoints,
                                    max(0.0, deadline - time.monotonic()))
                return self
            except RuntimeError as e:
                err = e
            self._kill()
            clash = self._own_listen and "in use" in self.tail(50)
            if not clash or time.monotonic() >= deadline:
                break
            self.url = f"http://127.0.0.1:{free_port()}"
        raise err

    def endpoints(self, timeout=2.0):
        """The endpoint URLs the proxy currently considers available."""
        status, body = _http_json("GET", f"{self.url}/v2/config/local/proxy",
                                  timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/v2/config/local/proxy: {status} {body!r}")
        return list(body.get("endpoints") or [])

    def wait_endpoints(self, n=1, timeout=30.0):
        """Wait until the proxy lists at least n endpoints; return them."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if not self.alive:
                raise RuntimeError(
                    f"proxy exited with code "
                    f"{self.proc.poll() if self.proc else None}"
                    + (f"\n{self.tail()}" if self.log_path else ""))
            try:
                eps = self.endpoints(timeout=1.0)
                if len(eps) >= n:
                    return eps
                last = f"endpoints {eps}"
            except (OSError, RuntimeError) as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"proxy at {self.url} did not list {n} endpoint(s) "
                    f"within {timeout:.1f}s; last: {last}"
                    + (f"\n{self.tail()}" if self.log_path else ""))
            time.sleep(0.05)

    def tail(self, lines=25):
        if self.log_path is None:  # output went to the terminal
            return ""
        return tail(self.log_path, lines)

    def _kill(self):
        if self.alive:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            wait_proc(self.proc, timeout=10.0)

    def stop(self, timeout=5.0):
        """SIGTERM by pid (the proxy shuts down cleanly), SIGKILL after
        timeout; remove our temp dir if we made one. Idempotent; returns
        the exit code (None if never started)."""
        atexit.unregister(self.stop)
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case paused
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            wait_proc(self.proc, timeout=timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return self.proc.returncode if self.proc is not None else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- python -m geproxy.localcluster ("make run") -------------------------------

class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def main(argv=None):
    """Start a local etcd cluster plus the geproxy in front of it, print how
    to talk to them, and run until Ctrl-C / SIGTERM (then exit 0)."""
    ap = argparse.ArgumentParser(
        prog="python -m geproxy.localcluster",
        description="Run a local etcd cluster with geproxy in front of it. "
                    "Unrecognised arguments are passed to the proxy.")
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--proxy-listen", default="http://127.0.0.1:8080")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    args, extra = ap.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    proxy_url = loopback_url(args.proxy_listen.rstrip("/"))

    # Turn SIGTERM into the same orderly shutdown as Ctrl-C.
    old = {s: signal.signal(s, _raise_stop)
           for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = proxy = None
    code = 0
    try:
        cluster = LocalCluster(size=args.size)
        t0 = time.monotonic()
        cluster.start(timeout=args.startup_timeout)
        print(f"etcd cluster ready in {time.monotonic() - t0:.1f}s "
              f"(data and logs in {cluster.base_dir})", flush=True)
        # The proxy logs straight to our terminal; it runs in its own
        # session so Ctrl-C reaches only us and we stop it deliberately.
        proxy = ProxyProcess(
            cluster.initial_cluster, args=extra, listen_url=proxy_url,
            data_dir=os.path.join(cluster.base_dir, "proxy-data"),
            inherit_output=True)
        proxy.start(endpoints=1, timeout=30.0)

        print("\netcd members:")
        for m in cluster.members:
            print(f"  {m.name}  client {m.client_url}  peer {m.peer_url}"
                  f"  pid {m.pid}")
        print(f"\ngeproxy (pid {proxy.pid}) listening on {proxy_url}\n")
        print("Try:")
        print(f"  curl -sS -X PUT {proxy_url}/v2/keys/hello -d value=world")
        print(f"  curl -sS {proxy_url}/v2/keys/hello")
        print(f"  curl -sS '{proxy_url}/v2/keys/hello?wait=true'")
        print(f"  curl -sS -N '{proxy_url}/v2/keys/hello?wait=true"
              f"&stream=true'")
        print(f"  ETCDCTL_API=2 etcdctl --no-sync --endpoints {proxy_url} ls /")
        print("\nCtrl-C to stop.", flush=True)

        code = proxy.proc.wait()
        print(f"proxy exited unexpectedly with code {code}", file=sys.stderr)
        code = code or 1
    except (_Stop, KeyboardInterrupt):
        print("\nstopping ...", flush=True)
        code = 0
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not abort the cleanup half-way.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            if proxy is not None:
                proxy.stop()
            if cluster is not None:
                cluster.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return code


if __name__ == "__main__":
    sys.exit(main())
