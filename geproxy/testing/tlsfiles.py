"""TLS for a LocalCluster's members: which URLs are https, the etcd flags, the harness's context.

The certificate files come from the caller (geproxy's own tests make them
with ``trustme``); this module only says how the members and the harness use
them, so the harness itself needs nothing beyond the standard library.
"""

import ssl
from dataclasses import dataclass, field

__all__ = ["ClusterTLS"]


@dataclass
class ClusterTLS:
    """Certificate files for every member of a LocalCluster.

    ``cert_file`` must name 127.0.0.1 and be usable as a client certificate
    too: members present it to each other on https peer URLs, and the
    harness presents it to the members when they require client certificates.
    ``client`` and ``peer`` choose which URLs are https; ``client_cert_auth``
    makes client URLs require client certificates signed by ``ca_file`` (peer
    URLs always do: members verify each other).
    """

    ca_file: str
    cert_file: str
    key_file: str
    client: bool = True
    peer: bool = True
    client_cert_auth: bool = True
    _context: ssl.SSLContext = field(default=None, init=False, repr=False)

    def scheme(self, side):
        """'https' or 'http' for the 'client' or 'peer' URLs."""
        return "https" if getattr(self, side) else "http"

    def member_flags(self):
        """The etcd flags that go with these files."""
        flags = []
        if self.client:
            flags += ["--cert-file", self.cert_file, "--key-file", self.key_file]
            if self.client_cert_auth:  # etcd 3.4 asks for client certificates once it has a CA
                flags += ["--trusted-ca-file", self.ca_file, "--client-cert-auth"]
        if self.peer:
            flags += ["--peer-cert-file", self.cert_file, "--peer-key-file", self.key_file,
                      "--peer-trusted-ca-file", self.ca_file, "--peer-client-cert-auth"]
        return flags

    @property
    def context(self):
        """The harness's SSLContext toward the members: trusts ca_file, presents cert_file."""
        if self._context is None:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.load_cert_chain(self.cert_file, self.key_file)
            self._context = context
        return self._context
