"""The gevent-etcdproxy command as a subprocess: exit codes, stderr, start and stop."""

import os
import signal
import subprocess
from contextlib import contextmanager

import pytest
import requests

from geproxy import __version__
from geproxy.testing import free_port
from tests.helpers import CLI, REPO, cli_env, poll, run_cli, session
from tests.test_settings import BAD_INPUTS


@contextmanager
def proxy(*args, **env):
    """Start a proxy listening on a free port with one dead peer; yield (proc, url, http).

    The process is killed by pid in ``finally``; ``proc.stdout_text`` holds its output
    once it has exited.
    """
    port, dead = free_port(), free_port()
    url = "http://127.0.0.1:%d" % port
    argv = CLI + ["--listen-client-urls", url,
                  "--initial-cluster", "x=http://127.0.0.1:%d" % dead,
                  "--proxy-refresh-interval", "200"] + list(args)
    proc = subprocess.Popen(argv, cwd=REPO, env=cli_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    http = session()

    def answers():
        assert proc.poll() is None, "proxy exited early: %s" % (proc.communicate(),)
        return http.get(url + "/v2/config/local/proxy", timeout=1).status_code == 200

    try:
        poll(answers, timeout=15, errors=(requests.RequestException,), what="the proxy to answer")
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
    r = run_cli(args, **env)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_proxy_off_line_names_the_flag():
    r = run_cli(["--proxy", "off"])
    assert r.returncode == 2 and "--proxy" in r.stderr


def test_version():
    r = run_cli(["--version"])
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
