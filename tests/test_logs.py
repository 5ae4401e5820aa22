"""Log lines: --log-format json (one zap-style object per line) and --access-log."""

import json
import logging
import os
import signal
import subprocess

import pytest
import requests

from geproxy.logs import JsonFormatter, TextFormatter
from geproxy.testing import free_port
from tests.fakeetcd import FakeEtcd
from tests.helpers import CLI, REPO, cli_env, poll, session


def record(message, *args, fields=None, exc_info=None):
    rec = logging.LogRecord("geproxy.test", logging.WARNING, "/x/geproxy/test.py", 7, message,
                            args, exc_info)
    if fields:
        rec.fields = fields
    return rec


def test_json_line_has_zaps_keys_and_the_fields():
    line = JsonFormatter().format(record("hello %s", "there", fields={"status": 200}))
    doc = json.loads(line)
    assert doc["level"] == "warn" and doc["msg"] == "hello there" and doc["status"] == 200
    assert doc["logger"] == "geproxy.test" and doc["caller"] == "test.py:7"
    assert doc["ts"].endswith("Z") and doc["ts"][10] == "T"


def test_json_traceback_stays_in_its_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        line = JsonFormatter(pid=True).format(record("failed", exc_info=sys.exc_info()))
    assert "\n" not in line
    doc = json.loads(line)
    assert "ValueError: boom" in doc["stacktrace"] and doc["pid"] == os.getpid()


def test_text_line_appends_fields_as_key_value():
    line = TextFormatter().format(record("request", fields={"target": "/v2/keys/a b",
                                                            "status": 200}))
    assert line.endswith('WARNING geproxy.test: request target="/v2/keys/a b" status=200')


@pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
def test_json_logs_parse_line_by_line(workers, tmp_path):
    url = "http://127.0.0.1:%d" % free_port()
    with FakeEtcd() as member:
        argv = CLI + ["--listen-client-urls", url, "--initial-cluster", member.initial_cluster,
                      "--data-dir", str(tmp_path / "data"), "--workers", str(workers),
                      "--log-format", "json", "--access-log", "--log-level", "debug"]
        proc = subprocess.Popen(argv, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            with session() as http:
                def serves():
                    return http.get(url + "/v2/keys/a", timeout=1).status_code == 200
                poll(serves, timeout=15, errors=(requests.RequestException,),
                     what="the proxy to serve")
                assert http.put(url + "/v2/keys/a", data={"value": "1"}).status_code == 200
                assert http.get(url + "/nope?x=1").status_code == 200
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = out.splitlines()
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(docs) > 5
    for doc in docs:
        assert {"level", "ts", "msg"} <= set(doc)
        assert doc["level"] in ("debug", "info", "warn", "error")
    access = [d for d in docs if d["logger"] == "geproxy.access"]
    assert {(d["method"], d["target"], d["status"], d["member"]) for d in access} >= {
        ("PUT", "/v2/keys/a", 200, member.url), ("GET", "/nope?x=1", 200, member.url)}
    assert all(isinstance(d["duration_ms"], float) and d["bytes"] > 0 for d in access)
    if workers > 1:
        assert any(d["logger"].startswith("gunicorn") for d in docs)
        assert all("pid" in d for d in docs)
    assert "Traceback" not in err
