"""geproxy.selfcert: the self-signed certificates of ``--auto-tls`` and ``--peer-auto-tls``.

As etcd's ``transport.SelfCert``: ``cert.pem`` and ``key.pem`` in a folder of
the data dir, made once and reused while both files exist, so a restart
serves the same certificate.  An ECDSA P-256 key, the hosts as subject
alternative names (IP addresses or DNS names), valid for a year, usable for
server and client authentication.  The folder is 0700, the files 0600, each
written to a temporary name and renamed, so an interrupted start leaves no
half-written pair behind to be reused.

``cryptography`` (pinned in requirements.txt) is imported only when a
certificate has to be made.
"""

import datetime
import ipaddress
import logging
import os

from geproxy.datadir import write_private

log = logging.getLogger("geproxy.selfcert")

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 365


def ensure(directory, hosts):
    """(cert path, key path) in ``directory``, made first if either file is missing.

    Raises OSError when the folder or files cannot be written.
    """
    cert_path = os.path.join(directory, CERT_NAME)
    key_path = os.path.join(directory, KEY_NAME)
    if os.path.isfile(cert_path) and os.path.isfile(key_path):
        return cert_path, key_path
    cert_pem, key_pem = make(hosts)
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    log.info("made a self-signed certificate for %s in %s", ", ".join(hosts), directory)
    return cert_path, key_path


def make(hosts):
    """(certificate PEM, key PEM) of a new self-signed certificate naming ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_encipherment=True, content_commitment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                   critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
