"""The gevent-etcdproxy command as a subprocess: exit codes, stderr, start and stop."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import requests

from geproxy import __version__
from tests.test_settings import BAD_INPUTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "geproxy"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(extra)
    return env


def run(args, timeout=20, **env):
    return subprocess.run(CMD + list(args), cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def proxy(*args, **env):
    """Start a proxy listening on a free port with one dead peer; yield (proc, url, http).

    The process is killed by pid in ``finally``; ``proc.stdout_text`` holds its output
    once it has exited.
    """
    port, dead = free_port(), free_port()
    url = "http://127.0.0.1:%d" % port
    argv = CMD + ["--listen-client-urls", url,
                  "--initial-cluster", "x=http://127.0.0.1:%d" % dead,
                  "--proxy-refresh-interval", "200"] + list(args)
    proc = subprocess.Popen(argv, cwd=REPO, env=clean_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    http = requests.Session()
    http.trust_env = False
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, "proxy exited early: %s" % (proc.communicate(),)
            try:
                r = http.get(url + "/v2/config/local/proxy", timeout=1)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "proxy did not answer in time"
            time.sleep(0.05)
        yield proc, url, http
    finally:
        http.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def stop(proc):
    """SIGTERM by pid; returns (exit code, stdout, stderr)."""
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    return proc.returncode, out, err


BAD = BAD_INPUTS + [(["--bogus-flag"], {}, "--bogus-flag")]


@pytest.mark.parametrize("args,env,needle", BAD)
def test_bad_input_exits_2_with_one_line(args, env, needle):
    r = run(args, **env)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_proxy_off_line_names_the_flag():
    r = run(["--proxy", "off"])
    assert r.returncode == 2 and "--proxy" in r.stderr


def test_version():
    r = run(["--version"])
    assert r.returncode == 0
    assert __version__ in r.stdout
    assert r.stderr == ""


def test_starts_answers_and_stops_on_sigterm():
    with proxy() as (proc, url, http):
        r = http.get(url + "/v2/config/local/proxy", timeout=5)
        assert r.status_code == 200 and r.json()["endpoints"] == []
        assert r.json()["lastRefresh"]["ok"] is False  # additive: why it is empty
        r = http.get(url + "/v2/keys/a", timeout=5)
        assert r.status_code == 503
        assert r.json() == {"message": "httpproxy: zero endpoints currently available"}
        code, out, err = stop(proc)
    assert code == 0
    assert "starting" in out and "stopped" in out
    assert "Traceback" not in out + err


def test_env_readonly_end_to_end():
    with proxy(ETCD_PROXY="readonly") as (proc, url, http):
        r = http.put(url + "/v2/keys/a", data={"value": "1"}, timeout=5)
        assert r.status_code == 501 and r.content == b""
        assert http.get(url + "/v2/keys/a", timeout=5).status_code == 503
        code, out, _ = stop(proc)
    assert code == 0
    assert "ETCD_PROXY=readonly" in out


def test_flag_beats_env():
    with proxy("--proxy", "on", ETCD_PROXY="readonly") as (proc, url, http):
        r = http.put(url + "/v2/keys/a", data={"value": "1"}, timeout=5)
        assert r.status_code == 503
        code, out, _ = stop(proc)
    assert code == 0
    warnings = [line for line in out.splitlines() if "WARNING" in line and "ETCD_PROXY" in line]
    assert len(warnings) == 1, out
