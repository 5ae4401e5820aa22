"""Certificates for ``throughput.py --tls``: one CA and one certificate for 127.0.0.1.

Made with trustme (pinned in requirements-dev.txt) into a fresh folder under
bench/out/. The members serve https client and peer URLs with the
certificate; both proxies serve their https listener with it and present it
to the members. Neither proxy is given the CA for forwarding: the Go proxy
would then require client certificates on its listener (etcd 3.4), which
wrk cannot send. Both find the CA through ``SSL_CERT_FILE`` instead, which Go's
crypto/x509 and OpenSSL both read as the system's trust store, so both verify
the members' certificates the same way.
"""

import os
import ssl
import tempfile

import trustme

from harness import OUT_DIR
from geproxy.testing import ClusterTLS


class BenchTLS:
    """The files, the members' ClusterTLS, and the proxies' flags and environment."""

    def __init__(self):
        os.makedirs(OUT_DIR, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="tls-", dir=OUT_DIR)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(self.dir, "ca.pem")
        self.cert_file = os.path.join(self.dir, "cert.pem")
        self.key_file = os.path.join(self.dir, "key.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        leaf.cert_chain_pems[0].write_to_path(self.cert_file)
        leaf.private_key_pem.write_to_path(self.key_file)
        # no client certificates on the members: wrk's "direct" row could not send one
        self.cluster = ClusterTLS(self.ca_file, self.cert_file, self.key_file,
                                  client_cert_auth=False)

    def proxy_args(self):
        """The same TLS flags for the Go proxy and ours."""
        return ["--cert-file", self.cert_file, "--key-file", self.key_file,
                "--peer-cert-file", self.cert_file, "--peer-key-file", self.key_file,
                "--peer-trusted-ca-file", self.ca_file]

    def proxy_env(self):
        return {"SSL_CERT_FILE": self.ca_file}

    def context(self):
        """The harness's context toward the https proxies."""
        return ssl.create_default_context(cafile=self.ca_file)
