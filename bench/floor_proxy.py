"""The floor: the smallest pywsgi + geventhttpclient proxy, for bench/throughput.py.

It forwards GETs to one member and does nothing else (no endpoint choice, no
header hygiene, no failover, no streaming).  What it costs per request is the
price of pywsgi and geventhttpclient themselves on this machine; geproxy's own
overhead is what it costs beyond this.  Usage: floor_proxy.py LISTEN_PORT MEMBER_URL
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from gevent import pywsgi  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402


def main(port, member_url):
    member = urlsplit(member_url)
    client = HTTPClient(member.hostname, member.port, concurrency=1000)

    def app(environ, start_response):
        target = environ["RAW_URI"] if "RAW_URI" in environ else environ["PATH_INFO"]
        resp = client.get(target)
        body = resp.read()
        start_response("%d %s" % (resp.status_code, "OK"),
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(body)))])
        return [body]

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # gevent#1233
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    pywsgi.WSGIServer(listener, app, log=None).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
