"""geproxy.datadir: the proxy's state on disk, in etcd's format.

``<data-dir>/proxy/cluster`` holds ``{"PeerURLs":[...]}``: the peer URLs of the
last successful member-list read.  A restarted proxy starts from it (ahead of
``--initial-cluster`` and discovery), so it finds a cluster whose membership
changed while it was down.  The folder is 0700 and the file 0600, written
atomically (temp file, fsync, rename) and only when its content changes (the
Go proxy rewrites and fsyncs it every 30 s).

A data dir holding ``member/`` belongs to an etcd member: refuse it.
"""

import json
import logging
import os

from geproxy.errors import DataDirError

log = logging.getLogger("geproxy.datadir")


def write_private(path, data):
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename, fsync of the
    folder), the file 0600 and its folder 0700 (made if need be)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    tmp = "%s.tmp.%d" % (path, os.getpid())  # workers may write at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class ClusterFile:
    """Read and write ``<data-dir>/proxy/cluster``."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proxy_dir = os.path.join(data_dir, "proxy")
        self.path = os.path.join(self.proxy_dir, "cluster")
        self._written = None

    def check(self):
        """Refuse a member's data dir (etcd would start a member there)."""
        member = os.path.join(self.data_dir, "member")
        if os.path.isdir(member):
            raise DataDirError(
                "data dir %s belongs to an etcd member (it holds member/); "
                "give the proxy its own --data-dir" % self.data_dir)

    def read(self):
        """The stored peer URLs, or None when there is no file yet."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataDirError("cannot read cluster file %s: %s" % (self.path, exc)) from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DataDirError("invalid cluster file %s: %s" % (self.path, exc)) from None
        urls = doc.get("PeerURLs") if isinstance(doc, dict) else None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise DataDirError('invalid cluster file %s: want {"PeerURLs":[...]}' % self.path)
        self._written = list(urls)
        return list(urls)

    def write(self, peer_urls):
        """Store the peer URLs atomically; a no-op when they did not change."""
        urls = list(peer_urls)
        if urls == self._written:
            return False
        data = json.dumps({"PeerURLs": urls}, separators=(",", ":")).encode()
        write_private(self.path, data)
        log.info("wrote peer URLs %s to %s", urls, self.path)
        self._written = urls
        return True
