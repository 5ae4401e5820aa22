"""A fake etcd member that a proxy *process* can use: peer and client URL on one port.

It answers ``GET /members`` (so ``--initial-cluster m=<url>`` makes it the only
member), holds watches the way etcd does (the head, chunked, at once; then
nothing until the client leaves) and answers ``/slow`` after ``slow`` seconds;
everything else gets a small JSON body.  It records what it was asked and how
many watches are open, so a test can wait for a request to be in flight
instead of sleeping.  Runs in the test process (gevent StreamServer).
"""

import json

import gevent
from gevent.server import StreamServer

from tests.fakeupstream import CLUSTER_ID, BadRequest, read_request
from tests.fakeupstream import DEFAULT_BODY as BODY


class FakeEtcd:
    def __init__(self, slow=3.0):
        self.slow = slow
        self.targets = []  # request targets, in arrival order
        self.watches = 0  # watches open right now
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()
        self.url = "http://127.0.0.1:%d" % self._server.address[1]

    @property
    def initial_cluster(self):
        return "m=" + self.url

    def close(self):
        self._server.stop(timeout=1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _answer(self, sock, status, body, extra=""):
        sock.sendall(("HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                      "X-Etcd-Cluster-Id: %s\r\n%sContent-Length: %d\r\n\r\n"
                      % (status, CLUSTER_ID, extra, len(body))).encode() + body)

    def _watch(self, sock):
        sock.sendall(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "X-Etcd-Cluster-Id: %s\r\nX-Etcd-Index: 7\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n" % CLUSTER_ID).encode())
        self.watches += 1
        try:
            while sock.recv(65536):  # nothing comes until the client (the proxy) leaves
                pass
        except OSError:
            pass
        finally:
            self.watches -= 1

    def _handle(self, sock, _address):
        rfile = sock.makefile("rb")
        try:
            while True:
                try:
                    request = read_request(rfile)
                except (BadRequest, ValueError):
                    return
                if request is None:
                    return
                self.targets.append(request.target)
                if request.target == "/members":
                    members = [{"id": "1", "name": "m", "peerURLs": [self.url],
                                "clientURLs": [self.url]}]
                    self._answer(sock, "200 OK", json.dumps(members).encode())
                elif "wait=true" in request.target:
                    self._watch(sock)
                    return
                elif request.target.startswith("/slow"):
                    gevent.sleep(self.slow)  # a member that takes its time, on purpose
                    self._answer(sock, "200 OK", BODY)
                else:
                    self._answer(sock, "200 OK", BODY)
        except OSError:
            pass
        finally:
            rfile.close()
            sock.close()
