"""The Procfile, tried the way a Heroku-style build runs it.

A fresh clone of this repository, a virtualenv with nothing but
``pip install -r requirements.txt``, and the Procfile's ``web:`` line run by
honcho (a Procfile runner, from requirements-dev.txt) with ``PORT``,
``ETCD_INITIAL_CLUSTER`` and ``WEB_CONCURRENCY`` set, in front of the real
cluster: PUT and GET must work on $PORT.  The clone holds the committed tree.
"""

import os
import signal
import subprocess
import sys

import pytest

from geproxy.testing import etcd_env, free_port, http, http_json, spawn, tail, v2_put
from geproxy.testing.procfs import process_tree
from tests.helpers import REPO, poll

HONCHO = os.path.join(os.path.dirname(sys.executable), "honcho")
INSTALL_TIMEOUT = 300  # seconds for pip; about 20 here


def build(app, venv):
    """The build step: the clone, and a virtualenv with requirements.txt only."""
    subprocess.run(["git", "clone", "--quiet", REPO, str(app)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "-r", "requirements.txt"],
                         cwd=str(app), capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert pip.returncode == 0, pip.stderr


def platform_env(venv, port, initial_cluster):
    """What the platform gives the web process: its PATH, PORT and the config vars."""
    env = {k: v for k, v in etcd_env().items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "WEB_CONCURRENCY")}
    env.update(PATH=os.pathsep.join((str(venv / "bin"), env.get("PATH", ""))),
               PORT=str(port), ETCD_INITIAL_CLUSTER=initial_cluster, WEB_CONCURRENCY="2")
    return env


def stop(proc):
    """SIGTERM to honcho (it passes it on to the web process), as the platform does; then
    SIGKILL by pid to whatever of its process tree is left."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_procfile_web_process_serves_puts_and_gets(cluster, tmp_path):
    app, venv, log = tmp_path / "app", tmp_path / "venv", str(tmp_path / "honcho.log")
    build(app, venv)
    with open(app / "Procfile") as f:
        assert f.read().startswith("web: ")
    port = free_port()
    proc = spawn([HONCHO, "start", "web"], log, platform_env(venv, port, cluster.initial_cluster),
                 cwd=str(app))  # the app's folder, as on the platform
    url = "http://127.0.0.1:%d" % port
    try:
        def listed():
            assert proc.poll() is None, tail(log)
            status, doc = http_json("GET", url + "/v2/config/local/proxy", timeout=1.0)
            return status == 200 and len(doc["endpoints"]) == len(cluster.members)
        poll(listed, timeout=30, errors=(OSError, ValueError), what="the web process on $PORT")
        assert v2_put(url, "procfile/hello", "world")[0] == 201
        status, body = http("GET", url + "/v2/keys/procfile/hello")
        assert status == 200 and b'"value":"world"' in body
        assert "with 2 worker processes" in tail(log, 200)  # WEB_CONCURRENCY was read
    finally:
        stop(proc)
    output = tail(log, 400)
    assert "web.1 stopped (rc=0)" in output, output  # the proxy stopped cleanly on SIGTERM
    assert "Traceback" not in output
