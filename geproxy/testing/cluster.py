"""A local etcd 3.4/3.5 cluster on loopback: members started, killed, paused, added, removed.

The proxy is always exercised against real etcd members rather than a fake:
the tests' session cluster, the failover tests' clusters that get broken on
purpose, the benchmarks, and ``make run`` all come from here. Every member
is an OwnedProcess (geproxy.testing.process), so it is signalled and reaped
by pid only, and dies with the harness. With ``tls`` (a ClusterTLS) the
members serve https client and/or peer URLs, and the harness talks to them
with its certificate.
"""

import atexit
import os
import secrets
import shutil
import signal
import time

from geproxy.testing.metrics import metric_value, read_metrics
from geproxy.testing.net import free_port, http, http_json, loopback_url, v2_put
from geproxy.testing.process import OwnedProcess, etcd_env, scratch_dir

__all__ = ["Member", "LocalCluster"]


class Member(OwnedProcess):
    """One etcd process of a LocalCluster, with its URLs, data dir and log."""

    def __init__(self, name, client_url, peer_url, data_dir, log_path,
                 initial_cluster="", initial_cluster_state="new", tls=None):
        self.name = name
        self.tls = tls  # a ClusterTLS, or None for plain http
        self.client_url = client_url
        self.peer_url = peer_url
        # The client URL it advertises when that is not the one it listens on
        # (a misconfigured member); None advertises client_url.
        self.advertised_url = None
        # How it bootstraps: from a discovery URL, or from initial_cluster
        # (only read by etcd on the very first start, with an empty data dir;
        # kept so a restart rebuilds an identical command line).
        self.discovery_url = None
        self.initial_cluster = initial_cluster
        self.initial_cluster_state = initial_cluster_state
        self.data_dir = data_dir
        self.log_path = log_path

    def __repr__(self):
        return "<Member %s client=%s peer=%s pid=%s alive=%s>" % (
            self.name, self.client_url, self.peer_url, self.pid, self.alive)

    def command(self, etcd_bin, token):
        """The etcd command line of this member."""
        if self.discovery_url is not None:
            bootstrap = ["--discovery", self.discovery_url]
        else:
            bootstrap = ["--initial-cluster", self.initial_cluster,
                         "--initial-cluster-token", token,
                         "--initial-cluster-state", self.initial_cluster_state]
        return [
            etcd_bin, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.advertised_url or self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            *bootstrap,
            "--enable-v2=true",
            # With the default strict check, etcd rejects member add/remove
            # (HTTP 500) until the receiving member has been connected to
            # every peer for 5 s, i.e. for 5 s after any start or restart.
            "--strict-reconfig-check=false",
            # Fast elections so kill/pause tests converge in well under 1 s.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            # zap and our stdout/stderr redirection both append to the same
            # file (O_APPEND), so one log holds early panics too.
            "--logger", "zap", "--log-outputs", self.log_path,
            *(self.tls.member_flags() if self.tls is not None else ()),
        ]

    @property
    def context(self):
        """The SSLContext the harness uses toward this member (None for http)."""
        return self.tls.context if self.tls is not None else None

    def metrics(self, timeout=5.0):
        """Every sample of this member's /metrics (see geproxy.testing.metrics)."""
        return read_metrics(self.client_url, timeout, self.context)

    def metric(self, name, default=0.0, **labels):
        """One counter or gauge, e.g. metric("etcd_http_received_total", method="GET");
        summed over the labels not given; default when etcd has not exported it yet."""
        return metric_value(self.metrics(), name, default, **labels)


class LocalCluster:
    """A real etcd cluster of `size` members on loopback, with random ports.

    Use as a context manager, or call start() and close() yourself; close()
    is also registered with atexit as a safety net.
    """

    READY_KEY = "_geproxy_ready"

    def __init__(self, size=3, host="127.0.0.1", base_dir=None, etcd_bin="etcd", token=None,
                 tls=None):
        loopback_url("http://%s" % host)
        self.size = size
        self.host = host
        self.tls = tls
        self.etcd_bin = etcd_bin
        # A unique token keeps members of concurrently running clusters
        # from ever accepting each other's peer traffic.
        self.token = token or "geproxy-%d-%s" % (os.getpid(), secrets.token_hex(4))
        self._owns_base_dir = base_dir is None
        self.base_dir = base_dir or scratch_dir()
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

    # -- addresses ---------------------------------------------------------------
    @property
    def client_urls(self):
        return [m.client_url for m in self.members]

    @property
    def peer_urls(self):
        return [m.peer_url for m in self.members]

    @property
    def initial_cluster(self):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    @property
    def context(self):
        """The SSLContext the harness uses toward the members (None for http)."""
        return self.tls.context if self.tls is not None else None

    def _url(self, side):
        """A fresh loopback URL for the 'client' or 'peer' side. Two free_port()
        calls can return the same port (the first socket is closed again):
        never hand one out twice here."""
        scheme = self.tls.scheme(side) if self.tls is not None else "http"
        for _ in range(100):
            port = free_port(self.host)
            if port not in self._used_ports:
                self._used_ports.add(port)
                return "%s://%s:%d" % (scheme, self.host, port)
        raise RuntimeError("could not find a free port")

    def _new_member(self, name=None):
        name = name or "m%d" % self._next_index
        self._next_index += 1
        m = Member(name, self._url("client"), self._url("peer"),
                   data_dir=os.path.join(self.base_dir, name + ".etcd"),
                   log_path=os.path.join(self.base_dir, name + ".log"), tls=self.tls)
        self._all_members.append(m)
        return m

    def _live(self, members=None):
        """Members running and not paused: the ones that answer without hanging."""
        members = self.members if members is None else members
        return [m for m in members if m.alive and not m.paused]

    def _any_live_url(self, besides=None):
        for m in self._live():
            if m is not besides:
                return m.client_url
        raise RuntimeError("no live etcd member")

    # -- process control ---------------------------------------------------------
    def _spawn(self, m):
        if self._closed:
            raise RuntimeError("cluster is closed")
        m.spawn(m.command(self.etcd_bin, self.token), env=etcd_env())

    def _logs(self, members=None):
        members = self.members if members is None else members
        return "\n".join("--- %s (pid %s, rc %s) %s\n%s" % (
            m.name, m.pid, m.returncode, m.log_path, m.tail()) for m in members)

    def start(self, timeout=60.0):
        """Start every member and wait until the cluster serves v2 writes.

        If a member dies because a port free_port() picked was taken in the
        meantime, retry (twice) with fresh ports and data dirs. Calling start()
        again (inside ``with LocalCluster() as c``, say) does nothing.
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
                    self._spawn(m)
                # Explicit members: the default (live ones only) would skip a
                # member that already crashed and call it success.
                self.wait_healthy(max(0.0, deadline - time.monotonic()), self.members)
                self._started = True
                return self
            except RuntimeError as e:
                err = e
                port_clash = any("address already in use" in m.tail(200)
                                 for m in self.members if not m.alive)
            except BaseException:  # etcd missing, Ctrl-C, ...
                for m in self.members:
                    m.kill()
                raise
            for m in self.members:
                m.kill()
            if not port_clash or attempt == 2 or time.monotonic() > deadline:
                break
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
                os.replace(m.log_path, "%s.attempt%d" % (m.log_path, attempt))
                m.client_url, m.peer_url = self._url("client"), self._url("peer")
        raise err

    def wait_healthy(self, timeout=30.0, members=None):
        """Wait until each given member (default: every running, unpaused one)
        reports {"health":"true"} on /health and accepts a v2 PUT.

        /health alone can be true a moment before a member can forward
        proposals; the PUT proves the member is usable. Fails at once if one
        of the members exits.
        """
        members = self._live() if members is None else list(members)
        deadline = time.monotonic() + timeout
        pending, last = list(members), {}
        while pending:
            for m in list(pending):
                if not m.alive:
                    raise RuntimeError("etcd member %s exited with code %s\n%s"
                                       % (m.name, m.returncode, self._logs(members)))
                t = max(0.1, min(2.0, deadline - time.monotonic()))
                try:
                    status, body = http_json("GET", m.client_url + "/health", timeout=t,
                                             context=m.context)
                    if status != 200 or not isinstance(body, dict) or \
                            body.get("health") != "true":
                        last[m.name] = "/health: %s %r" % (status, body)
                        continue
                    status, body = v2_put(m.client_url, self.READY_KEY, m.name, timeout=t,
                                          context=m.context)
                    if status not in (200, 201):
                        last[m.name] = "v2 PUT: %s %r" % (status, body[:200])
                        continue
                    pending.remove(m)
                except OSError as e:  # refused, reset, timeout ...
                    last[m.name] = repr(e)
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError("etcd members %s not healthy after %.1fs; last errors: %s\n%s"
                                   % ([m.name for m in pending], timeout, last,
                                      self._logs(members)))
            time.sleep(0.05)
        return self

    def kill(self, i, sig=signal.SIGKILL):
        """Send sig to member i and wait for its exit (any other signal than
        SIGKILL gets 10 s of grace, then SIGKILL)."""
        self.members[i].signal_and_wait(sig, timeout=10.0)

    def pause(self, i):
        """SIGSTOP member i (see OwnedProcess.pause)."""
        self.members[i].pause()

    def resume(self, i):
        self.members[i].resume()

    def restart(self, i, timeout=30.0, advertise_client_url=None, advertise_only_url=None,
                wait=True):
        """Start member i again on its data dir (killing it first if it runs).
        etcd ignores --initial-cluster* when the data dir exists, so the
        member rejoins with its old identity.

        advertise_client_url: listen on and advertise that URL instead (etcd
        publishes it through raft, so it shows in /v2/members). advertise_only_url:
        keep listening on the client URL but advertise this one (a misconfigured
        member; None clears it). wait=False returns at once (a whole stopped
        cluster needs every member up before any is healthy; then wait_healthy()).
        """
        m = self.members[i]
        m.kill()
        if advertise_client_url is not None:
            m.client_url = loopback_url(advertise_client_url.rstrip("/"))
        m.advertised_url = advertise_only_url
        self._spawn(m)
        if wait:
            self.wait_healthy(timeout=timeout, members=[m])
        return m

    def leader_index(self, timeout=10.0):
        """Index in self.members of the current leader, from each live member's
        /v2/stats/self; polls while an election is in progress."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                if not m.alive or m.paused:
                    continue
                try:
                    status, body = http_json("GET", m.client_url + "/v2/stats/self",
                                             timeout=1.0, context=m.context)
                except OSError:
                    continue
                if status == 200 and isinstance(body, dict) and \
                        body.get("state") == "StateLeader":
                    return i
            if time.monotonic() >= deadline:
                raise RuntimeError("no leader found within %ss" % timeout)
            time.sleep(0.05)

    # -- membership ---------------------------------------------------------------
    def add_member(self, name=None, timeout=60.0):
        """Grow the cluster by one member through the v2 members API, start it
        with --initial-cluster-state existing, wait until it is healthy and
        append it to self.members."""
        deadline = time.monotonic() + timeout
        m = self._new_member(name)
        attempt = 0
        while True:
            try:
                status, body = http_json("POST", self._any_live_url() + "/v2/members",
                                         {"peerURLs": [m.peer_url]}, timeout=5.0,
                                         context=self.context)
            except OSError as e:
                status, body = None, repr(e)
            # 409 on a retry: an earlier attempt did get through.
            if status == 201 or (status == 409 and attempt > 0):
                break
            if time.monotonic() >= deadline:
                self._all_members.remove(m)
                raise RuntimeError("POST /v2/members failed: %s %r" % (status, body))
            attempt += 1
            time.sleep(0.2)
        # The new member must be told exactly the current membership (killed
        # but not removed members included) plus itself.
        m.initial_cluster = ",".join("%s=%s" % (x.name, x.peer_url)
                                     for x in self.members + [m])
        m.initial_cluster_state = "existing"
        self.members.append(m)
        self._spawn(m)
        self.wait_healthy(max(0.0, deadline - time.monotonic()), [m])
        return m

    def remove_member(self, i):
        """Remove member i from the cluster (DELETE /v2/members/<id>), kill it
        and drop it from self.members (later indices shift down by one).
        Returns the removed Member."""
        m = self.members[i]
        base = self._any_live_url(besides=m)
        status, body = http_json("GET", base + "/v2/members", timeout=5.0,
                                 context=self.context)
        if status != 200:
            raise RuntimeError("GET /v2/members failed: %s %r" % (status, body))
        ids = [x["id"] for x in body["members"] if m.peer_url in x["peerURLs"]]
        if not ids:
            raise RuntimeError("%s (%s) is not a member" % (m.name, m.peer_url))
        status, body = http("DELETE", "%s/v2/members/%s" % (base, ids[0]), timeout=10.0,
                            context=self.context)
        if status != 204:
            raise RuntimeError("DELETE /v2/members/%s failed: %s %r" % (ids[0], status, body))
        m.kill()
        self.members.pop(i)
        return m

    def discovery_member(self, name, discovery_url):
        """Start one more etcd that bootstraps from discovery_url; do not wait.

        It joins whatever cluster that token forms, or becomes a proxy when the
        token is full (etcd's --discovery-fallback=proxy). It is not one of
        self.members (their membership is this cluster's), but close() stops it.
        """
        m = self._new_member(name)
        m.discovery_url = discovery_url
        self._spawn(m)
        return m

    # -- teardown -----------------------------------------------------------------
    def close(self):
        """Kill every process this cluster started (by pid) and remove the base
        dir if we created it. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            for m in self._all_members:
                m.kill()
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
