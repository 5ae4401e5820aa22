"""Child processes the harness owns: started, signalled, waited for and reaped by pid.

Every etcd member and proxy the harness starts goes through this module (the
load generators, wrk and py-spy, are plain short-lived subprocesses), so the
rules live in one place:

* a child runs in its own session, so a Ctrl-C in the terminal reaches only
  the harness, which then stops its children deliberately;
* on Linux a child is SIGKILLed by the kernel when the harness dies (a test
  runner's timeout, say), so nothing outlives a crashed run;
* a process is only ever signalled while it is known to be ours and not yet
  reaped (after reaping its pid may belong to a stranger), and never looked
  up by name, so parallel runs cannot hurt each other;
* output goes to a log file (appended), never to a pipe nobody reads.
"""

import ctypes
import os
import signal
import subprocess
import sys
import tempfile

__all__ = ["OwnedProcess", "spawn", "reap", "tail", "etcd_env", "scratch_dir"]

# The kernel ties the parent-death signal to the *thread* that forked: start
# children from a long-lived thread (pytest and gevent both use the main one).
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """A preexec_fn asking for SIGKILL when this process (the parent) dies; None off Linux."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def setup():
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return setup


def spawn(cmd, log_path=None, env=None, cwd=None):
    """Start cmd in its own session, dying with us; output appended to log_path.

    log_path None leaves stdout and stderr on our own (the terminal of
    ``python -m geproxy.testing``).
    """
    if log_path is None:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=_die_with_parent())
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent())


def reap(proc, timeout):
    """Wait for proc to exit; SIGKILL it (by pid) if it outlives timeout. Always reaps."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def tail(path, lines=25):
    """The last lines of a log file, for error messages (never raises)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "<no log: %s>" % (e,)
    return "\n".join(data.splitlines()[-lines:])


def etcd_env():
    """Our environment without ETCD_* and ETCDCTL_* variables.

    etcd and the proxy both read ETCD_* as flags: a stray one from the
    developer's shell would silently change what we think we start.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


def scratch_dir(prefix="geproxy-etcd-"):
    """A new temporary directory, on tmpfs when there is one.

    etcd fsyncs its WAL on every write; on a real disk that makes cluster
    start-up and every test write much slower.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return tempfile.mkdtemp(prefix=prefix, dir=shm)
    return tempfile.mkdtemp(prefix=prefix)


class OwnedProcess:
    """A process the harness started (``proc``), known and signalled only by pid.

    Subclasses set ``log_path`` (None: output on our terminal) and start
    with ``spawn(cmd, env)``.
    """

    proc = None
    log_path = None
    paused = False

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self):
        """True while the process exists (even when paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc is not None else None

    def spawn(self, cmd, env=None, cwd=None):
        self.proc = spawn(cmd, self.log_path, env, cwd)
        self.paused = False
        return self.proc

    def signal(self, sig):
        """Send ``sig`` to this process (nothing if it already exited)."""
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:  # exited on its own, not reaped yet
            pass

    def _running(self):
        if not self.alive:
            raise RuntimeError("%r is not running" % (self,))

    def pause(self):
        """SIGSTOP: it keeps its sockets but stops answering, like a hung machine
        (connections hang instead of being refused)."""
        self._running()
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self._running()
        self.signal(signal.SIGCONT)
        self.paused = False

    def signal_and_wait(self, sig, timeout=10.0):
        """Send sig, wait for the exit (SIGKILL after timeout), reap; the exit code.

        A paused process also gets SIGCONT, since a stopped process cannot act
        on anything but SIGKILL. Does nothing once the process has exited;
        None if it never started.
        """
        if self.alive:
            self.signal(sig)
            if sig != signal.SIGKILL:
                self.signal(signal.SIGCONT)
            reap(self.proc, timeout)
        self.paused = False
        return self.returncode

    def stop(self, timeout=10.0):
        """SIGTERM, SIGKILL after timeout; the exit code. Safe to call again."""
        return self.signal_and_wait(signal.SIGTERM, timeout)

    def kill(self):
        """SIGKILL and reap; the exit code."""
        return self.signal_and_wait(signal.SIGKILL)

    def tail(self, lines=25):
        """The end of this process's log ("" when its output went to the terminal)."""
        return "" if self.log_path is None else tail(self.log_path, lines)
