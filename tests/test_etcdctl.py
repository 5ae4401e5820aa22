"""The real v2 client, unchanged, through the proxy: `ETCDCTL_API=2 etcdctl --no-sync`."""

import os
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v etcdctl"], capture_output=True).returncode != 0,
    reason="etcdctl not installed")


def etcdctl(proxy, *args, timeout=15):
    env = dict(os.environ, ETCDCTL_API="2")
    out = subprocess.run(["etcdctl", "--no-sync", "--endpoints", proxy.url, *args],
                         capture_output=True, text=True, env=env, timeout=timeout)
    return out.returncode, out.stdout.strip(), out.stderr.strip()


def test_set_get_update_rm(proxy, key):
    k = key[len("/v2/keys"):]
    assert etcdctl(proxy, "set", k, "v1") == (0, "v1", "")
    assert etcdctl(proxy, "get", k) == (0, "v1", "")
    assert etcdctl(proxy, "update", k, "v2") == (0, "v2", "")
    assert etcdctl(proxy, "get", k)[1] == "v2"
    assert etcdctl(proxy, "rm", k)[0] == 0
    code, _out, err = etcdctl(proxy, "get", k)
    assert code != 0 and "Key not found" in err


def test_mk_refuses_existing_and_mkdir_ls(proxy, key):
    k = key[len("/v2/keys"):]
    assert etcdctl(proxy, "mk", k + "/a", "1") == (0, "1", "")
    code, _out, err = etcdctl(proxy, "mk", k + "/a", "again")
    assert code != 0 and "Key already exists" in err
    assert etcdctl(proxy, "mkdir", k + "/d")[0] == 0
    code, out, _err = etcdctl(proxy, "ls", k)
    assert code == 0
    assert sorted(out.splitlines()) == [k + "/a", k + "/d"]


def test_watch_sees_a_change(proxy, key):
    k = key[len("/v2/keys"):]
    etcdctl(proxy, "set", k, "before")
    env = dict(os.environ, ETCDCTL_API="2")
    watcher = subprocess.Popen(["etcdctl", "--no-sync", "--endpoints", proxy.url, "watch", k],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        # the watch is registered once the member counts it; then change the key
        deadline = time.monotonic() + 10
        code = None
        while time.monotonic() < deadline and watcher.poll() is None:
            etcdctl(proxy, "set", k, "after")
            try:
                out, _err = watcher.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
        code = watcher.returncode
        assert code == 0
        assert out.strip() == "after"
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_member_list(proxy, cluster):
    code, out, _err = etcdctl(proxy, "member", "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(cluster.members)
    for url in cluster.client_urls:
        assert any(url in line for line in lines)
