"""Discovery (--discovery, --discovery-srv): real etcd as the discovery service.

A one-member etcd on loopback holds the tokens; real etcd members started
with ``--discovery`` register in it, and the proxy (a subprocess, as in
production) learns their peer URLs from it.  Error answers etcd cannot give
come from a tiny in-process HTTP server; SRV records from a tiny in-process
DNS server built with dnspython.  Everything listens on 127.0.0.1 only.
"""

import functools
import json
import os
import socket
import uuid

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import gevent
import pytest
from gevent.pywsgi import WSGIServer

from geproxy import discovery
from geproxy.errors import BootstrapError
from geproxy.testing import LocalCluster, ProxyProcess, free_port
from tests.helpers import TRANSIENT, poll, run_cli, session

WAITING = "waiting for discovery: found %d of %d members"

# poll() as these tests wait: errors while the thing is not up yet are retried, and
# running out of time fails the test (every call names what it waits for).
wait_for = functools.partial(poll, timeout=15.0, errors=TRANSIENT)


# --- helpers ---------------------------------------------------------------------------


class Discovery:
    """Tokens in a real etcd v2 store, as a discovery service holds them."""

    def __init__(self, client_url):
        self.client_url = client_url
        self.http = session()

    def token(self, size=None, name=None):
        """A fresh token directory (with ``_config/size`` unless size is None); its URL."""
        url = "%s/v2/keys/_etcd/registry/%s" % (self.client_url, name or uuid.uuid4().hex)
        r = self.http.put(url, data={"dir": "true"}, timeout=5)
        assert r.status_code == 201, r.text
        if size is not None:
            self.put(url + "/_config/size", str(size))
        return url

    def put(self, url, value):
        r = self.http.put(url, data={"value": value}, timeout=5)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def delete(self, url):
        r = self.http.delete(url, timeout=5)
        assert r.status_code == 200, r.text

    def registrations(self, token_url):
        r = self.http.get(token_url, timeout=5)
        assert r.status_code == 200, r.text
        return [n for n in r.json()["node"].get("nodes", [])
                if not n["key"].endswith("/_config")]


@pytest.fixture(scope="module")
def disc():
    """One etcd member serving as the discovery service for the whole module."""
    with LocalCluster(size=1) as c:
        d = Discovery(c.members[0].client_url)
        yield d
        d.http.close()


@pytest.fixture
def own_disc():
    """A discovery etcd of the test's own, which the test may kill and restart."""
    c = LocalCluster(size=1)
    try:
        c.start()
        yield c, Discovery(c.members[0].client_url)
    finally:
        c.close()


@pytest.fixture
def etcds():
    """etcd processes started with ``--discovery`` (LocalCluster.discovery_member):
    members, or Go proxies when the token is full. Killed by pid afterwards."""
    c = LocalCluster(size=0)
    yield c
    c.close()


def healthy(client_url, http):
    r = http.get(client_url + "/health", timeout=1)
    return r.status_code == 200 and r.json().get("health") == "true"


def client_urls_of_members(client_url, http):
    """The cluster's own view: client URLs of its members (from /v2/members)."""
    r = http.get(client_url + "/v2/members", timeout=2)
    if r.status_code != 200:  # ValueError: wait_for() tries again
        raise ValueError("/v2/members: %d %s" % (r.status_code, r.text))
    return sorted(u for m in r.json()["members"] for u in m["clientURLs"])


def discovery_proxy(url, tmp_path, name="proxy", extra=()):
    """Our proxy with --discovery (no --initial-cluster), not yet started."""
    return ProxyProcess(None, args=["--discovery", url, "--proxy-refresh-interval", "500",
                                    *extra],
                        data_dir=str(tmp_path / name))


def waiting_message(p, http):
    """The 503 message a client gets from the waiting proxy."""
    r = http.get(p.url + "/v2/keys/anything", timeout=2)
    assert r.status_code == 503, (r.status_code, r.text)
    return r.json()["message"]


def config(p, http):
    r = http.get(p.url + "/v2/config/local/proxy", timeout=2)
    assert r.status_code == 200
    return r.json()


def put_get_through(p, http, member_url):
    """A write through the proxy is seen by a member directly, and read back."""
    key = "/v2/keys/disc-%s" % uuid.uuid4().hex[:10]
    r = http.put(p.url + key, data={"value": "v1"}, timeout=5)
    assert r.status_code == 201, r.text
    assert http.get(member_url + key, timeout=5).json()["node"]["value"] == "v1"
    assert http.get(p.url + key, timeout=5).json()["node"]["value"] == "v1"


def run_proxy(args, tmp_path, timeout=30):
    """Run the proxy to its exit; (returncode, stdout, stderr, data dir)."""
    data_dir = str(tmp_path / "data")
    done = run_cli(["--listen-client-urls", "http://127.0.0.1:%d" % free_port(),
                    "--data-dir", data_dir] + list(args), timeout=timeout)
    return done.returncode, done.stdout, done.stderr, data_dir


class FakeService:
    """A tiny HTTP server on 127.0.0.1: answers GETs with ``reply(path, query)``
    -> (status, content type, body bytes); records what it was asked."""

    def __init__(self, reply):
        self.reply = reply
        self.seen = []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_port

    def app(self, environ, start_response):
        path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        self.seen.append((path, query))
        status, ctype, body = self.reply(path, query)
        start_response("%d X" % status, [("Content-Type", ctype),
                                         ("Content-Length", str(len(body)))])
        return [body]

    def close(self):
        self.server.stop(timeout=1)


# --- (a) the proxy waits, answers 503, then follows the real members ----------------

def test_proxy_waits_for_members_then_forwards(disc, etcds, tmp_path):
    http = session()
    token = disc.token(size=3)
    p = discovery_proxy(token, tmp_path)
    try:
        p.start(endpoints=0)  # listening at once, before any member registered
        wait_for(lambda: waiting_message(p, http) == "httpproxy: " + WAITING % (0, 3),
                 what="503 with the waiting message")
        doc = config(p, http)
        assert doc["endpoints"] == []
        assert doc["waiting"] == WAITING % (0, 3)

        first = etcds.discovery_member("d0", token)
        wait_for(lambda: waiting_message(p, http) == "httpproxy: " + WAITING % (1, 3),
                 what="the proxy to see the first registration")
        assert config(p, http)["waiting"] == WAITING % (1, 3)
        others = [etcds.discovery_member("d%d" % i, token) for i in (1, 2)]
        members = [first] + others

        eps = p.wait_endpoints(3, timeout=30)
        expected = sorted(m.client_url for m in members)
        assert sorted(eps) == expected
        assert client_urls_of_members(first.client_url, http) == expected
        doc = config(p, http)
        assert sorted(doc["endpoints"]) == expected and "waiting" not in doc
        put_get_through(p, http, others[1].client_url)
        # the proxy never registered itself: exactly the three members are there
        assert len(disc.registrations(token)) == 3
        with open(os.path.join(p.data_dir, "proxy", "cluster")) as f:
            assert sorted(json.load(f)["PeerURLs"]) == sorted(m.peer_url for m in members)
    finally:
        p.stop()
        http.close()


# --- (b) a surplus etcd falls back to a Go proxy; ours lists only members --------------

def test_surplus_etcd_falls_back_and_is_not_listed(disc, etcds, tmp_path):
    http = session()
    token = disc.token(size=3)
    procs = [etcds.discovery_member("f%d" % i, token) for i in range(4)]
    # One of them finds the token full: before registering (etcd checks first)
    # or after, as the fourth by creation order; it becomes a Go proxy.

    def three_members():
        for e in procs:
            if healthy(e.client_url, http):  # the Go proxy answers /health too
                urls = client_urls_of_members(e.client_url, http)
                return urls if len(urls) == 3 else None
        return None

    member_clients = wait_for(three_members, timeout=30,
                              what="the three members to publish their client URLs")
    (fallback,) = [e for e in procs if e.client_url not in member_clients]
    # etcd's Go proxy answers its own config endpoint: it is a proxy, not a member
    wait_for(lambda: http.get(fallback.client_url + "/v2/config/local/proxy",
                              timeout=1).status_code == 200, timeout=20,
             what="the surplus etcd to serve as a proxy")
    assert os.path.isdir(os.path.join(etcds.base_dir, fallback.name + ".etcd", "proxy"))

    p = discovery_proxy(token, tmp_path)
    try:
        eps = p.start(endpoints=3).wait_endpoints(3)
        assert sorted(eps) == member_clients
        assert fallback.client_url not in eps
        put_get_through(p, http, member_clients[0])
    finally:
        p.stop()
        http.close()


# --- (c) and the unreachable case: retries, then the cluster file on restart ----------

def register_session_member(d, cluster):
    """A size-1 token whose one registration is the session cluster's first member."""
    token = d.token(size=1)
    d.put(token + "/1", "%s=%s" % (cluster.members[0].name, cluster.members[0].peer_url))
    return token


def test_unreachable_service_is_retried_until_it_appears(own_disc, cluster, tmp_path):
    c, d = own_disc
    http = session()
    token = register_session_member(d, cluster)
    c.kill(0)  # the service is away (its data, the token, stays on disk)
    p = discovery_proxy(token, tmp_path)
    try:
        p.start(endpoints=0)
        wait_for(lambda: p.tail(200).count("discovery service unreachable") >= 2,
                 what="two logged retries")
        assert "retrying in 1.0s" in p.tail(200) and "retrying in 2.0s" in p.tail(200)
        assert "cannot reach the discovery service" in waiting_message(p, http)
        assert not os.path.exists(os.path.join(p.data_dir, "proxy"))
        c.restart(0)  # same port, same data: the token is back
        eps = p.wait_endpoints(3, timeout=30)
        assert sorted(eps) == sorted(cluster.client_urls)
        put_get_through(p, http, cluster.client_urls[2])
    finally:
        p.stop()
        http.close()


def test_restart_uses_cluster_file_without_discovery(own_disc, cluster, tmp_path):
    c, d = own_disc
    http = session()
    token = register_session_member(d, cluster)
    p = discovery_proxy(token, tmp_path)
    try:
        p.start(endpoints=3)
        assert os.path.isfile(os.path.join(p.data_dir, "proxy", "cluster"))
    finally:
        assert p.stop() == 0
    c.kill(0)  # no discovery service any more
    again = discovery_proxy(token, tmp_path)  # same data dir, same flags
    try:
        eps = again.start(endpoints=3).wait_endpoints(3)
        assert sorted(eps) == sorted(cluster.client_urls)
        put_get_through(again, http, cluster.client_urls[1])
        log_text = again.tail(200)
        assert "discovery ignored: the proxy was initialized before" in log_text
        assert "unreachable" not in log_text
    finally:
        again.stop()
        http.close()


# --- (d) errors: exit 1, one line on stderr, no proxy/ folder -----------------------

def assert_fails(args, tmp_path, expected):
    code, out, err, data_dir = run_proxy(args, tmp_path)
    assert code == 1, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert not os.path.exists(os.path.join(data_dir, "proxy"))
    return lines[0]


def test_missing_size_key(disc, tmp_path):
    token = disc.token(size=None)
    line = assert_fails(["--discovery", token], tmp_path, "discovery: size key not found")
    assert token + "/_config/size" in line


def test_missing_token(disc, tmp_path):
    token = "%s/v2/keys/_etcd/registry/%s" % (disc.client_url, uuid.uuid4().hex)
    assert_fails(["--discovery", token], tmp_path, "discovery: size key not found")


def test_non_numeric_size(disc, tmp_path):
    token = disc.token(size="three")
    line = assert_fails(["--discovery", token], tmp_path, "discovery: size key is bad")
    assert "'three'" in line


def test_duplicate_names(disc, tmp_path):
    token = disc.token(size=2)
    disc.put(token + "/a1", "same=http://127.0.0.1:1")
    disc.put(token + "/a2", "same=http://127.0.0.1:2")
    assert_fails(["--discovery", token], tmp_path, "discovery: found duplicate name 'same'")


@pytest.mark.parametrize("ctype,body,expected", [
    ("text/html", b"<html>no etcd here</html>", "discovery: bad discovery endpoint"),
    ("application/json", b'{"hello": "world"}', "discovery: unexpected answer from"),
    ("application/json", b'[1, 2, 3]', "discovery: unexpected answer from"),
])
def test_bad_answers(tmp_path, ctype, body, expected):
    fake = FakeService(lambda path, query: (200, ctype, body))
    try:
        assert_fails(["--discovery", fake.url + "/tok"], tmp_path, expected)
        assert fake.seen[0][0] == "/tok/_config/size"
    finally:
        fake.close()


# --- (e) DNS SRV ----------------------------------------------------------------------

class TinyDNS:
    """A UDP DNS server on 127.0.0.1 answering from ``records``:
    {(name, type): [rdata text, ...]}; unknown names get NXDOMAIN."""

    def __init__(self, records):
        self.records = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in records.items()}
        self.names = {n for n, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked = []
        self.greenlet = gevent.spawn(self.serve)

    def serve(self):
        while True:  # ends when close() kills the greenlet
            data, addr = self.sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            q = query.question[0]
            name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
            self.asked.append((name, rdtype))
            texts = self.records.get((name, rdtype))
            if texts:
                response.answer.append(
                    dns.rrset.from_text_list(q.name, 60, "IN", rdtype, texts))
            elif name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), addr)

    def close(self):
        self.greenlet.kill()
        self.sock.close()


def port_of(url):
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def dns_server(cluster):
    """SRV records for example.test: http ones at the session cluster's peer ports,
    an https one at a port where nothing listens, plus A records -> 127.0.0.1."""
    dead = free_port()
    records = {
        ("_etcd-server._tcp.example.test", "SRV"):
            ["0 0 %d m%d.example.test." % (port_of(u), i)
             for i, u in enumerate(cluster.peer_urls)],
        ("_etcd-server-ssl._tcp.example.test", "SRV"): ["0 0 %d s0.example.test." % dead],
        ("_etcd-server-dc1._tcp.example.test", "SRV"): ["0 0 2380 n1.example.test."],
        ("s0.example.test", "A"): ["127.0.0.1"],
        ("n1.example.test", "A"): ["127.0.0.1"],
    }
    for i in range(len(cluster.peer_urls)):
        records[("m%d.example.test" % i, "A")] = ["127.0.0.1"]
    server = TinyDNS(records)
    server.dead_port = dead
    yield server
    server.close()


def test_srv_peer_urls_uses_both_kinds(dns_server, cluster):
    resolver = "127.0.0.1:%d" % dns_server.port
    urls = discovery.srv_peer_urls("example.test", resolver=resolver)
    expected = ["https://127.0.0.1:%d" % dns_server.dead_port] + \
        ["http://127.0.0.1:%d" % port_of(u) for u in cluster.peer_urls]
    assert sorted(urls) == sorted(expected)
    assert ("_etcd-server._tcp.example.test.", "SRV") in dns_server.asked
    assert ("_etcd-server-ssl._tcp.example.test.", "SRV") in dns_server.asked

    # Without resolving targets the names stay, trailing dots stripped (as etcd).
    res = discovery.make_resolver(resolver)
    named = discovery.lookup_srv("example.test.", "", res, resolve_targets=False)
    assert sorted(named) == sorted(
        ["https://s0.example.test:%d" % dns_server.dead_port]
        + ["http://m%d.example.test:%d" % (i, port_of(u))
           for i, u in enumerate(cluster.peer_urls)])

    assert discovery.srv_peer_urls("example.test", name="dc1", resolver=resolver) == \
        ["http://127.0.0.1:2380"]
    assert ("_etcd-server-ssl-dc1._tcp.example.test.", "SRV") in dns_server.asked


def test_srv_without_records_is_an_error(dns_server):
    with pytest.raises(BootstrapError, match="no peer URLs found for nothing.test"):
        discovery.srv_peer_urls("nothing.test", resolver="127.0.0.1:%d" % dns_server.port)


def test_srv_proxy_forwards(dns_server, cluster, tmp_path):
    http = session()
    p = ProxyProcess(None, args=["--discovery-srv", "example.test",
                                 "--discovery-srv-resolver", "127.0.0.1:%d" % dns_server.port],
                     data_dir=str(tmp_path / "srv"))
    try:
        eps = p.start(endpoints=3).wait_endpoints(3)
        assert sorted(eps) == sorted(cluster.client_urls)
        put_get_through(p, http, cluster.client_urls[0])
    finally:
        p.stop()
        http.close()


# --- (f) conflicting bootstrap flags ---------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["--initial-cluster", "a=http://127.0.0.1:2380"],
    ["--discovery-srv", "example.test"],
])
def test_conflicting_flags(tmp_path, extra):
    assert_fails(["--discovery", "http://127.0.0.1:1/v2/keys/tok"] + extra, tmp_path,
                 "multiple discovery or bootstrap flags are set. Choose one of "
                 '"initial-cluster", "discovery" or "discovery-srv"')


# --- the protocol in-process: what counts, back-off ----------------------------------

class CountingClient(discovery.DiscoveryClient):
    """Counts the watches so a test knows the client is waiting again."""

    watches = 0

    def wait_change(self, index):
        self.watches += 1
        return super().wait_change(index)


def test_only_existing_registrations_count(disc):
    """An update or a delete is an event too; the Go code counted each as a member."""
    token = disc.token(size=2)
    disc.put(token + "/k1", "a=http://127.0.0.1:1001")
    seen = []
    client = CountingClient(token, progress=seen.append)
    job = gevent.spawn(client.discover)
    try:
        wait_for(lambda: client.watches == 1, what="the first watch")
        assert seen == [WAITING % (1, 2)]
        disc.put(token + "/k1", "a=http://127.0.0.1:1001")  # "set" on the same key
        wait_for(lambda: client.watches == 2, what="a watch after the update")
        disc.delete(token + "/k1")
        wait_for(lambda: client.watches == 3, what="a watch after the delete")
        assert not job.ready()
        assert seen[-1] == WAITING % (0, 2)
        disc.put(token + "/k2", "b=http://127.0.0.1:1002")
        disc.put(token + "/k3", "c=http://127.0.0.1:1003,c=http://127.0.0.1:1004")
        urls = job.get(timeout=10)
        assert urls == ["http://127.0.0.1:1002", "http://127.0.0.1:1003",
                        "http://127.0.0.1:1004"]
    finally:
        job.kill()
        client.session.close()


def test_full_token_uses_first_by_creation_order(disc):
    token = disc.token(size=2)
    for key, value in (("z", "n1=http://127.0.0.1:2001"), ("a", "n2=http://127.0.0.1:2002"),
                       ("m", "n3=http://127.0.0.1:2003")):
        disc.put(token + "/" + key, value)
    assert discovery.discover(token) == ["http://127.0.0.1:2001", "http://127.0.0.1:2002"]


def test_backoff_is_capped_and_logged(caplog):
    delays = []

    class Enough(Exception):
        pass

    def sleep(seconds):
        delays.append(seconds)
        if len(delays) == 6:
            raise Enough

    seen = []
    client = discovery.DiscoveryClient("http://127.0.0.1:%d/tok" % free_port(),
                                       progress=seen.append, sleep=sleep, backoff=(1, 4))
    with caplog.at_level("WARNING", logger="geproxy.discovery"), pytest.raises(Enough):
        client.discover()
    assert delays == [1, 2, 4, 4, 4, 4]
    assert sum("discovery service unreachable" in r.message for r in caplog.records) == 6
    assert seen == ["waiting for discovery: cannot reach the discovery service at "
                    + client.url]


def test_5xx_is_retried_then_answer_used():
    answers = iter([(503, "text/plain", b"busy"), (500, "text/plain", b"oops")])
    size = json.dumps({"action": "get", "node": {"key": "/tok/_config/size", "value": "1"}})
    listing = json.dumps({"action": "get", "node": {"key": "/tok", "dir": True, "nodes": [
        {"key": "/tok/_config", "dir": True, "createdIndex": 3},
        {"key": "/tok/x", "value": "m=http://127.0.0.1:3001", "createdIndex": 5}]}})

    def reply(path, query):
        for status, ctype, body in answers:
            return status, ctype, body
        return 200, "application/json", (size if path.endswith("/size") else listing).encode()

    fake = FakeService(reply)
    try:
        client = discovery.DiscoveryClient(fake.url + "/tok", sleep=lambda s: None)
        assert client.discover() == ["http://127.0.0.1:3001"]
        assert [p for p, _ in fake.seen] == ["/tok/_config/size"] * 3 + ["/tok"]
    finally:
        fake.close()


def test_discovery_proxy_routes_discovery_traffic(disc, cluster):
    """--discovery-proxy: the requests go to the HTTP proxy, with absolute URLs."""
    token = register_session_member(disc, cluster)
    upstream = session()
    seen = []

    def app(environ, start_response):  # a forward proxy in miniature: relay to etcd
        uri = environ.get("REQUEST_URI") or environ["PATH_INFO"]
        seen.append(uri)  # absolute-form, as a client talks to an HTTP proxy
        r = upstream.get(uri, timeout=5) if uri.startswith(disc.client_url) else None
        if r is None:
            start_response("502 X", [("Content-Length", "0")])
            return []
        start_response("%d X" % r.status_code, [("Content-Type", "application/json"),
                                                ("X-Etcd-Index", r.headers["X-Etcd-Index"])])
        return [r.content]

    def no_retry(seconds):
        pytest.fail("the discovery request through the proxy failed: %r" % seen)

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    client = discovery.DiscoveryClient(
        token, proxy="http://127.0.0.1:%d" % server.server_port, sleep=no_retry)
    try:
        assert client.discover() == [cluster.members[0].peer_url]
        assert seen and all(s.startswith(disc.client_url) for s in seen), seen
    finally:
        client.session.close()
        server.stop(timeout=1)
        upstream.close()
