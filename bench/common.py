"""Shared parts of the bench scripts: targets, the Go proxy, /proc readings.

Everything runs on loopback.  Every process started here is tracked by pid
and stopped by pid (SIGTERM, then SIGKILL after a bound); nothing is looked
up by name.  The scripts put this directory first on sys.path (they are run as
``python bench/<script>.py``), and the repository root second so that
``geproxy`` imports without an install.
"""

import json
import os
import shutil
import signal
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

from geproxy import localcluster  # noqa: E402
from geproxy.localcluster import LocalCluster, Member, ProxyProcess, free_port  # noqa: E402

OUT_DIR = os.path.join(HERE, "out")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_KEY = "bench/key"


def log(message):
    """Progress lines go to stderr so that stdout holds only the tables."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process by pid."""
    signal.signal(signal.SIGTERM, _interrupt)


def raise_nofile():
    """Many client sockets in one process: lift the soft fd limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


# --- what this checkout of geproxy supports -----------------------------------------


def proxy_features():
    """(transports, default transport, workers supported) of this checkout.

    Read from geproxy itself so the bench follows the code: a transport or
    --workers that has not landed yet is skipped with a note, not an error.
    """
    import importlib.util
    from geproxy import settings
    transports = tuple(settings.TRANSPORTS)
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
    if not workers:
        workers = [1]
    return [(t, w) for t in transports for w in workers]


def proxy_args(transport=None, workers=1, balance=None):
    _have, _default, have_workers = proxy_features()
    args = ["--log-level", "warn"]
    if transport:
        args += ["--proxy-transport", transport]
    if have_workers:
        args += ["--workers", str(workers)]
    if balance:
        args += ["--proxy-balance", balance]
    return args


# --- the members --------------------------------------------------------------------


class Target:
    """The etcd members under test: a LocalCluster we start, or given URLs."""

    def __init__(self, members_opt=None, initial_cluster=None, size=3):
        self.cluster = None
        if members_opt:
            if not initial_cluster:
                raise SystemExit("--members needs --initial-cluster (for the proxies)")
            urls = [u.strip().rstrip("/") for u in members_opt.split(",") if u.strip()]
            for u in urls:
                localcluster.loopback_url(u)
            self.members = [Member("m%d" % i, u, None, None, None) for i, u in enumerate(urls)]
            self.initial_cluster = initial_cluster
        else:
            self.cluster = LocalCluster(size=size)
            self.members = self.cluster.members
            self.initial_cluster = None

    def start(self):
        if self.cluster is not None:
            t0 = time.monotonic()
            self.cluster.start(timeout=60.0)
            self.initial_cluster = self.cluster.initial_cluster
            log("etcd cluster of %d members ready in %.1fs"
                % (len(self.members), time.monotonic() - t0))
        return self

    def close(self):
        if self.cluster is not None:
            self.cluster.close()

    def ports(self):
        return [urllib.parse.urlsplit(m.client_url).port for m in self.members]

    def put(self, key, value):
        status, body = localcluster.v2_put(self.members[0].client_url, key, value, timeout=5.0)
        if status not in (200, 201):
            raise RuntimeError("PUT %s: %s %r" % (key, status, body[:200]))

    def received(self):
        """Per member: etcd_http_received_total summed over methods."""
        out = []
        for m in self.members:
            metrics = m.metrics(timeout=5.0)
            out.append(sum(v for k, v in metrics.items()
                           if k.startswith("etcd_http_received_total")))
        return out


# --- the Go proxy -------------------------------------------------------------------


def _get_json(url, timeout=1.0):
    status, body = localcluster.http("GET", url, timeout=timeout)
    if status != 200:
        raise RuntimeError("%s: %s" % (url, status))
    return json.loads(body)


class BenchProcess(localcluster.OwnedProcess):
    """A proxy process the bench started, with a temp dir of its own (``_tmp``)."""

    _tmp = None

    def stop(self, timeout=5.0):
        if self.alive:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            localcluster.wait_proc(self.proc, timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class GoProxy(BenchProcess):
    """``etcd --proxy on`` as a child process, with the ProxyProcess interface."""

    def __init__(self, initial_cluster, etcd_bin="etcd", args=()):
        self.initial_cluster = initial_cluster
        self.etcd_bin = etcd_bin
        self.args = list(args)
        self.url = "http://127.0.0.1:%d" % free_port()
        self._tmp = localcluster.default_base_dir()
        self.data_dir = os.path.join(self._tmp, "go-proxy-data")
        self.log_path = os.path.join(self._tmp, "go-proxy.log")
        self.proc = None

    def command(self):
        return [self.etcd_bin, "--proxy", "on", "--listen-client-urls", self.url,
                "--initial-cluster", self.initial_cluster, "--data-dir", self.data_dir,
                *self.args]

    def start(self, endpoints=1, timeout=30.0):
        self.proc = localcluster.spawn(self.command(), self.log_path,
                                        env=localcluster.etcd_env())
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive:
                break
            try:
                eps = _get_json(self.url + "/v2/config/local/proxy").get("endpoints") or []
                if len(eps) >= endpoints:
                    return self
                last = eps
            except (OSError, ValueError, RuntimeError) as exc:
                last = exc
            time.sleep(0.05)
        tail = localcluster.tail(self.log_path)
        self.stop()
        raise RuntimeError("Go proxy did not come up (last: %r)\n%s" % (last, tail))



class FloorProxy(BenchProcess):
    """bench/floor_proxy.py (pywsgi + geventhttpclient, nothing else) in front of one member."""

    def __init__(self, member_url):
        self.member_url = member_url
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self._tmp = localcluster.default_base_dir()
        self.log_path = os.path.join(self._tmp, "floor-proxy.log")
        self.proc = None

    def start(self, timeout=15.0):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor_proxy.py")
        self.proc = localcluster.spawn([sys.executable, script, str(self.port), self.member_url],
                                       self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive:
            try:
                status, _body = localcluster.http("GET", self.url + "/version", timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        tail = localcluster.tail(self.log_path)
        self.stop()
        raise RuntimeError("floor proxy did not come up\n%s" % tail)



def start_ours(initial_cluster, args, endpoints):
    """Our proxy as a subprocess, waiting until it lists `endpoints` members."""
    proxy = ProxyProcess(initial_cluster, args=args)
    proxy.start(endpoints=endpoints, timeout=30.0)
    return proxy


# --- /proc readings -------------------------------------------------------------------


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def process_tree(pid):
    """pid and all its live descendants (gunicorn workers, for instance)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid):
    """CPU time (user+system) of pid and its descendants, live and reaped."""
    total = 0
    for p in process_tree(pid):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        # utime stime cutime cstime: fields 14-17 of stat, 11-14 here.
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def box_busy_seconds():
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


class ForeignLoad:
    """CPU used on this machine by processes that are not ours, over an interval.

    Ours = this process and every descendant (members, proxies, wrk), live or
    reaped.  A shared box's other users show up here as cores busy; a run with
    a high value is a noisy run.
    """

    def __init__(self):
        self.t0 = time.monotonic()
        self.busy0 = box_busy_seconds()
        self.ours0 = cpu_seconds(os.getpid())

    def cores(self):
        wall = time.monotonic() - self.t0
        busy = box_busy_seconds() - self.busy0
        ours = cpu_seconds(os.getpid()) - self.ours0
        return max(0.0, busy - ours) / wall if wall > 0 else 0.0


def _socket_inodes(pids):
    inodes = set()
    for p in pids:
        fd_dir = "/proc/%d/fd" % p
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in names:
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def established(pid, ports):
    """Established TCP connections from pid (and descendants) to each port in ports.

    Read from /proc/<pid>/net/tcp{,6} (the kernel's socket table) and the
    processes' fd links, so it counts what the kernel sees, not what the
    proxy believes it has.
    """
    pids = process_tree(pid)
    inodes = _socket_inodes(pids)
    want = {p: 0 for p in ports}
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "01":  # 01 = ESTABLISHED
                continue
            port = int(fields[2].rsplit(":", 1)[1], 16)
            if port in want and fields[9] in inodes:
                want[port] += 1
    return [want[p] for p in ports]


# --- numbers ------------------------------------------------------------------------


def jain(xs):
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 is even, 1/n is all on one."""
    xs = list(xs)
    sq = sum(x * x for x in xs)
    if not xs or sq == 0:
        return float("nan")
    return sum(xs) ** 2 / (len(xs) * sq)


def max_min(xs):
    lo, hi = min(xs), max(xs)
    return float("inf") if lo == 0 else hi / lo


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def table(headers, rows, aligns=None):
    """A GitHub-flavoured Markdown table (also readable as plain text)."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    aligns = aligns or ["l"] + ["r"] * (len(headers) - 1)

    def line(cells):
        out = []
        for c, w, a in zip(cells, widths, aligns):
            out.append(c.ljust(w) if a == "l" else c.rjust(w))
        return "| " + " | ".join(out) + " |"

    sep = "| " + " | ".join(("-" * w if a == "l" else "-" * (w - 1) + ":")
                            for w, a in zip(widths, aligns)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])
