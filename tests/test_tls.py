"""TLS on both sides, against real etcd 3.4 members; certificates made here with trustme.

https listeners in front of an http cluster and of a cluster that is TLS all
the way (https client and peer URLs, client certificates required), client
certificate checks, etcdctl over TLS, renewed certificate files taken without
a restart, bad TLS flags, and upstream TLS connections kept alive.
"""

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import uuid

import gevent
import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from geproxy import handler
from geproxy import settings as settings_mod
from geproxy import tls
from geproxy.testing import ClusterTLS, LocalCluster, free_port
from geproxy.testing.procfs import connections
from geproxy.testing.rawhttp import Reader
from tests.helpers import poll, run_cli
from tests.inproc import proxy_stack


class PKI:
    """Certificate files in one folder: a CA, certificates it issued, a foreign CA's."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = self.write("ca.pem", self.ca.cert_pem.bytes())
        self.cert_file, self.key_file = self.issue("server")  # 127.0.0.1, server and client
        self.client = self.issue("client")
        self.revoked = self.issue("revoked")
        foreign = trustme.CA()
        self.foreign_ca_file = self.write("foreign-ca.pem", foreign.cert_pem.bytes())
        self.foreign = self.issue("foreign", foreign)
        self.crl_file = self.write("crl.pem", self.crl(self.revoked[0]))

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, name, ca=None):
        """(cert path, key path) of a new certificate for 127.0.0.1 and localhost."""
        leaf = (ca or self.ca).issue_cert("127.0.0.1", "localhost")
        return (self.write(name + ".pem", leaf.cert_chain_pems[0].bytes()),
                self.write(name + "-key.pem", leaf.private_key_pem.bytes()))

    def crl(self, cert_path):
        """A revocation list signed by the CA that revokes the certificate in cert_path."""
        key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        issuer = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes()).subject
        with open(cert_path, "rb") as f:
            serial = x509.load_pem_x509_certificate(f.read()).serial_number
        now = datetime.datetime.now(datetime.timezone.utc)
        revoked = x509.RevokedCertificateBuilder().serial_number(serial) \
            .revocation_date(now - datetime.timedelta(minutes=5)).build()
        crl = x509.CertificateRevocationListBuilder().issuer_name(issuer) \
            .last_update(now - datetime.timedelta(minutes=5)) \
            .next_update(now + datetime.timedelta(days=1)) \
            .add_revoked_certificate(revoked).sign(key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def context(self, pair=None):
        """A client SSLContext trusting the CA, presenting ``pair`` (default: ours)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        cert, key = pair or (self.cert_file, self.key_file)
        context.load_cert_chain(cert, key)
        return context

    def session(self, pair=None):
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca_file
        s.cert = pair or (self.cert_file, self.key_file)
        return s

    def client_flags(self, peer=True):
        flags = ["--cert-file", self.cert_file, "--key-file", self.key_file,
                 "--trusted-ca-file", self.ca_file]
        return flags + self.peer_flags() if peer else flags

    def peer_flags(self):
        return ["--peer-cert-file", self.cert_file, "--peer-key-file", self.key_file,
                "--peer-trusted-ca-file", self.ca_file]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def tls_cluster(pki):
    """Three etcd members with https client and peer URLs, client certificates required."""
    with LocalCluster(size=3, tls=ClusterTLS(pki.ca_file, pki.cert_file, pki.key_file)) as c:
        yield c


@pytest.fixture
def proxies(start_proxy):
    """start_proxy for a cluster, waiting for all its members by default."""
    def start(cluster, args, endpoints=None, **kwargs):
        return start_proxy(cluster.initial_cluster, args,
                           len(cluster.members) if endpoints is None else endpoints, **kwargs)
    return start


def key_path():
    return "/v2/keys/tls%s" % uuid.uuid4().hex[:12]


def served_certificate(url, ca_file=None):
    """The certificate (DER) an https URL serves to a new connection (unchecked without
    ``ca_file``)."""
    host, port = url.split("://")[1].rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls_sock:
            return tls_sock.getpeercert(binary_form=True)


def der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def refused(session, url):
    """True when the proxy refuses the connection's TLS (no answer at all)."""
    try:
        session.get(url + "/v2/keys/", timeout=5)
    except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
        return True
    return False


# --- the listener ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1")
def test_https_and_http_listeners_in_front_of_an_http_cluster(cluster, pki, proxies):
    https_url = "https://127.0.0.1:%d" % free_port()
    http_url = "http://127.0.0.1:%d" % free_port()
    proxy = proxies(cluster, ["--cert-file", pki.cert_file, "--key-file", pki.key_file,
                              "--listen-client-urls", "%s,%s" % (https_url, http_url)],
                    context=pki.context(), listen_url=https_url)
    key = key_path()
    with pki.session() as s:
        s.cert = None  # no client certificate: none is asked for
        assert s.put(proxy.url + key, data={"value": "tls"}, timeout=5).status_code == 201
        assert s.get(proxy.url + key, timeout=5).json()["node"]["value"] == "tls"
        assert sorted(s.get(proxy.url + "/v2/config/local/proxy").json()["endpoints"]) == \
            sorted(cluster.client_urls)
    with requests.Session() as plain:
        plain.trust_env = False
        assert plain.get(http_url + key, timeout=5).json()["node"]["value"] == "tls"
        assert refused(plain, https_url.replace("https:", "http:"))  # http to the https port
    # TLS 1.2 is the least the listener takes
    for oldest, newest, works in (("TLSv1_2", "TLSv1_2", True), ("TLSv1", "TLSv1_1", False)):
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(pki.ca_file)
        client.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this OpenSSL offer TLS 1.0/1.1
        client.minimum_version = getattr(ssl.TLSVersion, oldest)
        client.maximum_version = getattr(ssl.TLSVersion, newest)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            try:
                client.wrap_socket(sock, server_hostname="127.0.0.1").close()
                assert works, newest
            except (ssl.SSLError, ConnectionResetError):
                assert not works, newest
    with open(proxy.log_path) as f:
        assert "listening for client requests on %s" % https_url in f.read()


def test_client_certificates_are_checked(cluster, pki, proxies):
    """--trusted-ca-file alone requires client certificates (as etcd 3.4); the CRL revokes."""
    proxy = proxies(cluster, ["--cert-file", pki.cert_file, "--key-file", pki.key_file,
                              "--trusted-ca-file", pki.ca_file,
                              "--client-crl-file", pki.crl_file],
                    context=pki.context(pki.client))
    no_cert = pki.session()
    no_cert.cert = None
    for who, session in (("no certificate", no_cert), ("a foreign CA's", pki.session(pki.foreign)),
                         ("a revoked one", pki.session(pki.revoked))):
        with session:
            assert refused(session, proxy.url), who
    with pki.session(pki.client) as good:
        assert good.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200


def test_https_listener_with_workers(cluster, pki, proxies):
    """--workers: the arbiter loads the files, each gunicorn worker serves our context."""
    proxy = proxies(cluster, ["--cert-file", pki.cert_file, "--key-file", pki.key_file,
                              "--trusted-ca-file", pki.ca_file, "--workers", "2"],
                    context=pki.context())
    with pki.session() as s:
        for _ in range(4):  # new connections, spread over the workers by the kernel
            s.close()
            assert s.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200
    no_cert = pki.session()
    no_cert.cert = None
    with no_cert:
        assert refused(no_cert, proxy.url)


def test_auto_tls_makes_a_self_signed_certificate(cluster, proxies):
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    proxy = proxies(cluster, ["--auto-tls"], context=unchecked)
    folder = os.path.join(proxy.data_dir, "proxy", "clientCerts")
    assert os.stat(folder).st_mode & 0o777 == 0o700
    for name in ("cert.pem", "key.pem"):
        assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o600
    assert served_certificate(proxy.url) == der(os.path.join(folder, "cert.pem"))


# --- toward https members --------------------------------------------------------------


def test_tls_all_the_way(tls_cluster, pki, proxies):
    """https listener, https members requiring client certificates: PUT, GET, watch."""
    proxy = proxies(tls_cluster, pki.client_flags(), context=pki.context())
    key = key_path()
    with pki.session() as s, pki.session() as watcher:
        assert sorted(s.get(proxy.url + "/v2/config/local/proxy", timeout=5)
                      .json()["endpoints"]) == sorted(tls_cluster.client_urls)
        assert all(u.startswith("https://") for u in tls_cluster.client_urls)
        assert s.put(proxy.url + key, data={"value": "one"}, timeout=5).status_code == 201
        got = s.get(proxy.url + key, timeout=5).json()["node"]
        assert got["value"] == "one"
        watch = gevent.spawn(lambda: watcher.get(
            proxy.url + key, params={"wait": "true", "waitIndex": got["modifiedIndex"] + 1},
            timeout=10).json())
        assert s.put(proxy.url + key, data={"value": "two"}, timeout=5).status_code == 200
        event = watch.get(timeout=10)
        assert event["action"] == "set" and event["node"]["value"] == "two"
        big = "x" * (600 << 10)  # many TLS records each way
        assert s.put(proxy.url + key, data={"value": big}, timeout=10).status_code == 200
        assert s.get(proxy.url + key, timeout=10).json()["node"]["value"] == big


def test_forwarding_falls_back_to_the_peer_flags(tls_cluster, pki, proxies):
    """No client-side TLS flag: the peer certificate is presented to the members (etcd 3.3+)."""
    proxy = proxies(tls_cluster, pki.peer_flags())
    with requests.Session() as s:
        s.trust_env = False
        assert s.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200


@pytest.mark.parametrize("transport", ["native", "requests"])
def test_a_member_that_fails_verification_is_logged_once(tls_cluster, pki, proxies, transport):
    """Members read with the peer flags, forwarding trusts a foreign CA: every forward fails
    verification; one line per member says why, however often it happens."""
    proxy = proxies(tls_cluster, pki.peer_flags() + [
        "--trusted-ca-file", pki.foreign_ca_file, "--proxy-failure-wait", "0",
        "--proxy-transport", transport])
    with requests.Session() as s:
        s.trust_env = False
        for _ in range(5):
            assert s.get(proxy.url + "/v2/keys/", timeout=5).status_code == 502
    with open(proxy.log_path) as f:
        lines = [line for line in f if "TLS with member" in line]
    for url in tls_cluster.client_urls:
        mine = [line for line in lines if url.split("://")[1] in line]
        assert len(mine) == 1, lines
        assert "certificate verify failed" in mine[0] and "(forwarding)" in mine[0]


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed")
def test_etcdctl_through_an_https_proxy(tls_cluster, pki, proxies):
    proxy = proxies(tls_cluster, pki.client_flags(), context=pki.context())
    key = key_path()[len("/v2/keys"):]
    base = ["etcdctl", "--no-sync", "--endpoints", proxy.url, "--ca-file", pki.ca_file,
            "--cert-file", pki.cert_file, "--key-file", pki.key_file]
    env = dict(os.environ, ETCDCTL_API="2")
    for args, out in ((["set", key, "v1"], "v1"), (["get", key], "v1")):
        done = subprocess.run(base + args, capture_output=True, text=True, env=env, timeout=15)
        assert (done.returncode, done.stdout.strip()) == (0, out), done.stderr


def test_one_keep_alive_connection_makes_one_upstream_handshake(tls_cluster, pki):
    """In process, counted: 30 GETs on one client connection, one TLS handshake each side."""
    settings, _ = settings_mod.parse(["--listen-client-urls", "https://127.0.0.1:0"]
                                     + pki.client_flags(), {})
    contexts = tls.load(settings)
    with proxy_stack(tls_cluster.client_urls[0], tls=contexts) as (port, _server), \
            pki.session() as s:
        for _ in range(30):
            assert s.get("https://127.0.0.1:%d/v2/keys/" % port, timeout=5).status_code == 200
    assert contexts.server.handshakes == 1
    assert contexts.forward.handshakes == 1


def test_over_the_cap_an_https_listener_closes_without_a_plain_answer(pki):
    """A client that expects a TLS handshake cannot read a plain 503: over
    --proxy-max-connections an https listener closes the new connection at once."""
    settings, _ = settings_mod.parse(["--listen-client-urls", "https://127.0.0.1:0"]
                                     + pki.client_flags(peer=False), {})
    contexts = tls.load(settings)
    with proxy_stack("https://127.0.0.1:9", tls=contexts, max_connections=1) as (port, server):
        held = pki.context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                         server_hostname="127.0.0.1")
        try:
            assert poll(lambda: server.gate.open == 1)
            over = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                try:
                    answer = over.recv(100)
                except ConnectionResetError:
                    answer = b""
                assert answer == b""  # closed, no "HTTP/1.1 503" where a ServerHello belongs
            finally:
                over.close()
            assert server.gate.shed_over_cap == 1 and server.gate.open == 1
        finally:
            held.close()


def test_upstream_tls_connections_stay_open_across_requests(tls_cluster, pki, proxies):
    """The proxy as a process: the same upstream connection (local port) serves every GET."""
    proxy = proxies(tls_cluster, pki.client_flags(), context=pki.context())
    ports = {int(u.rsplit(":", 1)[1]) for u in tls_cluster.client_urls}
    with pki.session() as s:
        assert s.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200
        before = connections(proxy.pid, ports)
        for _ in range(20):
            assert s.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200
        assert connections(proxy.pid, ports) == before
    assert len(before) == 1


# --- renewed files ------------------------------------------------------------------------


def replace(path, data):
    """Write ``data`` to ``path`` the way cert-manager and Vault agents do: a new file
    renamed over the old one."""
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def log_has(proxy, text):
    with open(proxy.log_path) as f:
        return text in f.read()


def test_listener_certificate_rotation(cluster, pki, proxies, tmp_path):
    """Renewed files reach new connections without a restart; a half-written pair does not.

    Laid out as Kubernetes mounts secrets: cert.pem -> ..data/cert.pem, ..data -> v1/.
    """
    live = tmp_path / "live"
    (live / "v1").mkdir(parents=True)
    shutil.copy(pki.cert_file, live / "v1" / "cert.pem")
    shutil.copy(pki.key_file, live / "v1" / "key.pem")
    os.symlink("v1", live / "..data")
    for name in ("cert.pem", "key.pem"):
        os.symlink(os.path.join("..data", name), live / name)
    cert, key = str(live / "cert.pem"), str(live / "key.pem")
    proxy = proxies(cluster, ["--cert-file", cert, "--key-file", key],
                    context=pki.context())
    assert served_certificate(proxy.url, pki.ca_file) == der(pki.cert_file)
    kept = pki.session()
    assert kept.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200

    # the certificate renamed into place before its key: not taken, logged, still serving
    new_cert, new_key = pki.issue("renewed")
    replace(str(live / "v1" / "cert.pem"), read(new_cert))
    poll(lambda: log_has(proxy, "renewed TLS files for the https listeners not taken"),
         timeout=10, what="the half-written pair to be refused")
    assert served_certificate(proxy.url, pki.ca_file) == der(pki.cert_file)
    # then the key: new connections get the new certificate, the open one goes on
    replace(str(live / "v1" / "key.pem"), read(new_key))
    poll(lambda: served_certificate(proxy.url, pki.ca_file) == der(new_cert),
         timeout=10, what="the renewed certificate on a new connection")
    assert kept.get(proxy.url + "/v2/keys/", timeout=5).status_code == 200
    kept.close()

    # a symlink swap (..data -> v2), as a Kubernetes secret update
    third_cert, third_key = pki.issue("third")
    (live / "v2").mkdir()
    shutil.copy(third_cert, live / "v2" / "cert.pem")
    shutil.copy(third_key, live / "v2" / "key.pem")
    os.symlink("v2", live / "..data.new")
    os.replace(live / "..data.new", live / "..data")
    poll(lambda: served_certificate(proxy.url, pki.ca_file) == der(third_cert),
         timeout=10, what="the certificate behind the swapped symlink")


def test_forwarding_context_follows_its_files(pki, tmp_path, caplog):
    """The member side, in process: a renewed client pair or CA makes a new context; a
    half-written pair keeps the old one, logged once while it stays so."""
    cert, key, ca = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    for src, dst in ((pki.cert_file, cert), (pki.key_file, key), (pki.ca_file, ca)):
        shutil.copy(src, dst)
    settings, _ = settings_mod.parse(["--cert-file", cert, "--key-file", key,
                                      "--trusted-ca-file", ca], {})
    forward = tls.load(settings).forward
    first = forward.context
    assert not forward.reload()
    other_cert, other_key = pki.issue("member-side")
    replace(cert, read(other_cert))
    assert not forward.reload() and not forward.reload()
    assert forward.context is first
    refusals = [r for r in caplog.records if "not taken" in r.getMessage()]
    assert len(refusals) == 1 and "--key-file" in refusals[0].getMessage()
    replace(key, read(other_key))
    assert forward.reload() and forward.context is not first
    second = forward.context
    replace(ca, read(pki.ca_file) + read(pki.foreign_ca_file))
    assert forward.reload() and forward.context is not second


def test_peer_auto_tls_presents_a_self_signed_certificate_and_skips_verification(tmp_path):
    settings, _ = settings_mod.parse(["--peer-auto-tls", "--data-dir", str(tmp_path)], {})
    contexts = tls.load(settings)
    folder = tmp_path / "proxy" / "peerCerts"
    assert sorted(os.listdir(folder)) == ["cert.pem", "key.pem"]
    assert not contexts.peer.verifies and not contexts.forward.verifies  # etcd#9301 fixed
    assert contexts.peer.context.verify_mode == ssl.CERT_NONE
    assert contexts.server is None


# --- bad input --------------------------------------------------------------------------


BAD_TLS = [  # (args, env, what the one line must say); {name} are PKI attributes
    (["--cert-file", "/nonexistent/cert.pem", "--key-file", "{key_file}"], {}, "--cert-file"),
    (["--trusted-ca-file", "{dir}"], {}, "--trusted-ca-file"),
    (["--cert-file", "{cert_file}", "--key-file", "{foreign_key}"], {}, "does not match"),
    (["--cert-file", "{cert_file}"], {}, "--key-file"),
    (["--listen-client-urls", "https://127.0.0.1:{port}"], {}, "--listen-client-urls"),
    (["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_NOPE"], {}, "TLS_NOPE"),
    (["--client-crl-file", "{cert_file}"], {}, "--client-crl-file"),
    ([], {"ETCD_PEER_CERT_FILE": "/nonexistent/peer.pem", "ETCD_PEER_KEY_FILE": "{key_file}"},
     "ETCD_PEER_CERT_FILE"),
]


@pytest.mark.parametrize("args,env,needle", BAD_TLS)
def test_bad_tls_input_exits_2_with_one_line(pki, tmp_path, args, env, needle):
    values = dict(vars(pki), foreign_key=pki.foreign[1], port=free_port(), dir=pki.dir)
    args = [a.format(**values) for a in args] + ["--data-dir", str(tmp_path / "data")]
    env = {k: v.format(**values) for k, v in env.items()}
    r = run_cli(args, **env)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_an_idle_https_connection_parks_and_its_next_request_is_served(cluster, pki,
                                                                         monkeypatch):
    """An idle TLS keep-alive connection gives up its greenlet like a plain one, and its
    next request (a new TLS record on the kernel socket) wakes it."""
    monkeypatch.setattr(handler, "PARK_AFTER", 0.05)
    settings, _ = settings_mod.parse(["--listen-client-urls", "https://127.0.0.1:0"]
                                     + pki.client_flags(peer=False), {})
    contexts = tls.load(settings)
    with proxy_stack(cluster.client_urls[0], tls=contexts) as (port, proxy):
        server = proxy.servers[0]
        sock = pki.context().wrap_socket(socket.create_connection(("127.0.0.1", port),
                                                                  timeout=5),
                                         server_hostname="127.0.0.1")
        reader = Reader(sock)
        try:
            for _ in range(3):
                sock.sendall(b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\n\r\n")
                assert reader.response()[0] == 200
                assert poll(lambda: len(server.parked) == 1, timeout=5.0)
                assert not any(h.greenlet for h in server.connections)
        finally:
            sock.close()
        assert poll(lambda: not server.parked and server.gate.open == 0, timeout=5.0)
    assert contexts.server.handshakes == 1
