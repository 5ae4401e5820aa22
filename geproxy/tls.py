"""geproxy.tls: SSLContexts from etcd's TLS flags, kept current as their files change.

A process has three, as etcd 3.4's proxy does, all TLS 1.2 at least, with
``--cipher-suites`` in etcd's (Go's) names:

* ``server``, for the https listeners: ``--cert-file``/``--key-file`` (or a
  self-signed pair ``--auto-tls`` makes under ``<data-dir>/proxy/clientCerts``);
  ``--trusted-ca-file``, with or without ``--client-cert-auth`` (as etcd 3.4),
  requires client certificates it signed; ``--client-crl-file`` refuses revoked ones.
* ``forward``, toward the members' https client URLs: the client flags when
  any of cert, key or CA is given, else the peer flags (etcd 3.3+).  Members'
  certificates are verified against the trusted CA (the system's without
  one), except with ``--auto-tls`` (as etcd) or, on the peer flags,
  ``--peer-auto-tls`` (which etcd forgot there, etcd#9301).
* ``peer``, for reading ``/members`` from https peer URLs: the peer flags;
  ``--peer-crl-file`` refuses revoked member certificates.

Each is a ``LiveContext``: the handler and the native member client call its
``wrap_socket`` when they make a connection, and the requests-based paths (the
``requests`` transport, the member-list reads) get its current context through
``ContextAdapter`` when urllib3 makes one; either way a renewed certificate is
used by new connections while open ones keep theirs. The ``TLS`` watcher
greenlet stats the files every ``WATCH_INTERVAL`` seconds (device, inode,
size, mtime: a file renamed over the old one, a symlink swapped, a file
rewritten) and rebuilds a context whose files changed. A rebuild that fails
(the certificate renamed into place before its key, a file half written) keeps
the working context, is logged once, and is tried again at the next check.
"""

import logging
import os
import ssl
from collections import namedtuple
from functools import partial
from urllib.parse import urlsplit

import gevent
import requests
from requests.adapters import HTTPAdapter

from geproxy import selfcert
from geproxy.errors import DataDirError, TLSSettingError, UsageError, causes
from geproxy.values import host_port

log = logging.getLogger("geproxy.tls")

WATCH_INTERVAL = 1.0  # seconds between two looks at the certificate files
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

File = namedtuple("File", "setting path")  # a TLS file and the flag that named it
Side = namedtuple("Side", "cert key ca crl")  # one side's Files; path "" when not given


def flag(setting):
    return "--" + setting.replace("_", "-")


# --- building contexts ------------------------------------------------------------


def _read(file):
    try:
        with open(file.path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSSettingError(file.setting, file.path,
                              "cannot read it (%s)" % (exc.strerror or exc)) from None


def _words(exc):
    """An OpenSSL error's text without its source position."""
    text = str(exc)
    cut = text.rfind(" (_ssl.c:")
    return text[:cut] if cut > 0 else text


def _load_pair(ctx, side):
    cert, key = side.cert, side.key
    _read(cert)
    _read(key)
    try:
        ctx.load_cert_chain(cert.path, key.path)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSSettingError(key.setting, key.path, "the key does not match the "
                                  "certificate in %s %s" % (flag(cert.setting), cert.path)) from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert.path)
        except ssl.SSLError:
            raise TLSSettingError(cert.setting, cert.path, "no PEM certificate in it") from None
        raise TLSSettingError(key.setting, key.path,
                              "no usable PEM private key in it (%s)" % _words(exc)) from None


def _load_ca(ctx, file):
    _read(file)
    try:
        ctx.load_verify_locations(cafile=file.path)
    except ssl.SSLError as exc:
        raise TLSSettingError(file.setting, file.path,
                              "no PEM certificate in it (%s)" % _words(exc)) from None


def _check_crl(file):
    if b"-----BEGIN X509 CRL-----" not in _read(file):
        raise TLSSettingError(file.setting, file.path, "no PEM revocation list (X509 CRL) in it")


def _load_crl(ctx, file):
    _check_crl(file)
    try:
        ctx.load_verify_locations(cafile=file.path)
    except ssl.SSLError as exc:
        raise TLSSettingError(file.setting, file.path, _words(exc)) from None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _base(protocol, ciphers):
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = MINIMUM_VERSION
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def server_context(side, ciphers, verify_clients):
    """The listeners' context: the pair, and client certificates checked when asked."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, ciphers)
    _load_pair(ctx, side)
    if verify_clients:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if side.ca.path:
            _load_ca(ctx, side.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if side.crl.path:
            _load_crl(ctx, side.crl)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(side, ciphers, verify):
    """A context toward members: their certificates verified (unless ``verify`` is
    False) against the side's CA or the system's, our certificate presented if given."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, ciphers)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif side.ca.path:
        _load_ca(ctx, side.ca)
    else:
        ctx.load_default_certs()
    if verify and side.crl.path:
        _load_crl(ctx, side.crl)
    if side.cert.path:
        _load_pair(ctx, side)
    return ctx


# --- contexts that follow their files ---------------------------------------------------


def _stamp(paths):
    """What tells that a file changed: device, inode, size and mtime (after symlinks)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            stamps.append(exc.errno)
    return tuple(stamps)


class LiveContext:
    """The SSLContext in force for one use (``what``), rebuilt when its files change.

    ``wrap_socket`` is SSLContext's, with the context of the moment: the
    listener's handler and the member clients call it for each new connection
    (``handshakes`` counts them).  ``verifies`` tells whether peers'
    certificates are checked.  A context without files is built at its first use.
    """

    def __init__(self, what, build, paths=(), verifies=True):
        self.what = what
        self.paths = tuple(p for p in paths if p)
        self.verifies = verifies
        self.handshakes = 0
        self._build = build
        self._stamp = _stamp(self.paths)
        self._context = build() if self.paths else None
        self._refused = None  # the files' stamp whose rebuild failed (logged once)
        self._failing = {}  # member -> why its last handshake failed (logged once)

    @property
    def context(self):
        if self._context is None:
            self._context = self._build()
        return self._context

    def wrap_socket(self, sock, server_side=False, **kwargs):
        self.handshakes += 1
        if server_side:
            return self.context.wrap_socket(sock, server_side=True, **kwargs)
        host, port = sock.getpeername()[:2]  # the wrapped socket takes over the descriptor
        member = host_port(kwargs.get("server_hostname") or host, port)
        try:
            tls = self.context.wrap_socket(sock, **kwargs)
        except ssl.SSLError as exc:
            self.failed(member, exc)
            raise
        self.succeeded(member)
        return tls

    def failed(self, member, exc):
        """A TLS connection to ``member`` failed: logged once per member and reason."""
        reason = _words(next((e for e in causes(exc) if isinstance(e, ssl.SSLError)), exc))
        if self._failing.get(member) != reason:
            self._failing[member] = reason
            log.warning("TLS with member %s failed (%s): %s; logged once until it works",
                        member, self.what, reason)

    def succeeded(self, member):
        if self._failing and self._failing.pop(member, None) is not None:
            log.info("TLS with member %s works again (%s)", member, self.what)

    def reload(self):
        """Take the files again if any changed; True when a new context took over."""
        stamp = _stamp(self.paths)
        if stamp == self._stamp:
            return False
        try:
            context = self._build()
        except (TLSSettingError, OSError, ssl.SSLError) as exc:  # a file gone mid-read too
            if stamp != self._refused:
                self._refused = stamp
                where = ("%s %s: " % (flag(exc.setting), exc.value)
                         if isinstance(exc, TLSSettingError) else "")
                log.warning("renewed TLS files for %s not taken: %s%s; keeping the ones in "
                            "use, trying again", self.what, where, exc)
            return False
        self._context, self._stamp, self._refused = context, stamp, None
        log.info("TLS files for %s renewed: new connections use them", self.what)
        return True


class TLS:
    """A process's LiveContexts (``server`` is None without https listeners) and the
    greenlet that keeps them current."""

    def __init__(self, server, forward, peer):
        self.server = server
        self.forward = forward
        self.peer = peer
        self._greenlet = None

    def contexts(self):
        return [c for c in (self.server, self.forward, self.peer) if c is not None]

    def listener_contexts(self, listen_urls):
        """{listen URL: server context} for the https ones."""
        return {url: self.server for url in listen_urls if url.startswith("https:")}

    def watch(self):
        while True:
            gevent.sleep(WATCH_INTERVAL)
            for live in self.contexts():
                try:
                    live.reload()
                except Exception:  # keep watching whatever one check did
                    log.exception("checking the TLS files for %s failed", live.what)

    def start(self):
        if self._greenlet is None and any(live.paths for live in self.contexts()):
            self._greenlet = gevent.spawn(self.watch)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None


# --- from the settings ---------------------------------------------------------------------


def _side(settings, cert, key, ca, crl):
    side = Side(*(File(name, getattr(settings, name)) for name in (cert, key, ca, crl)))
    for given, missing in ((cert, key), (key, cert)):
        if getattr(settings, given) and not getattr(settings, missing):
            raise TLSSettingError(missing, "", "%s is set, which needs it too"
                                  % settings.given_as(given))
    for file in side:
        if file.path:
            _read(file)
    if side.crl.path:
        _check_crl(side.crl)
    return side


def _auto(side, setting, directory, hosts):
    """``side`` with a self-signed pair (made in ``directory`` if need be) as its own."""
    try:
        cert, key = selfcert.ensure(directory, hosts)
    except OSError as exc:
        raise DataDirError("cannot write the %s certificate in %s: %s"
                           % (flag(setting), directory, exc)) from None
    return side._replace(cert=File(setting, cert), key=File(setting, key))


def load(settings):
    """The TLS of a process from its settings.

    UsageError (exit 2) naming the flag for a file that cannot be read or used,
    a key that does not match its certificate, an unknown cipher suite, or an
    https listen URL with neither a certificate nor --auto-tls; DataDirError
    when an auto-TLS certificate cannot be written.
    """
    try:
        return _load(settings)
    except TLSSettingError as exc:
        raise UsageError("invalid value %r for %s: %s"
                         % (exc.value, settings.given_as(exc.setting), exc)) from None


def _load(settings):
    ciphers = settings.cipher_suites
    client = _side(settings, "cert_file", "key_file", "trusted_ca_file", "client_crl_file")
    peer = _side(settings, "peer_cert_file", "peer_key_file", "peer_trusted_ca_file",
                 "peer_crl_file")
    proxy_dir = os.path.join(settings.data_dir_path, "proxy")
    https = [url for url in settings.listen_client_urls if url.startswith("https:")]
    hosts = sorted({urlsplit(url).hostname for url in https}) or ["localhost"]
    server = None
    if https:
        listen = client
        if settings.auto_tls and not client.cert.path:
            listen = _auto(client, "auto_tls", os.path.join(proxy_dir, "clientCerts"), hosts)
        elif not client.cert.path:
            raise TLSSettingError("listen_client_urls", https[0], "an https listener needs "
                                  "--cert-file and --key-file, or --auto-tls")
        verify_clients = bool(client.ca.path) or settings.client_cert_auth
        server = LiveContext("the https listeners",
                             partial(server_context, listen, ciphers, verify_clients),
                             [f.path for f in listen], verifies=verify_clients)
    if settings.peer_auto_tls and not peer.cert.path:
        peer = _auto(peer, "peer_auto_tls", os.path.join(proxy_dir, "peerCerts"), hosts)
    if client.cert.path or client.ca.path:
        forward_side, skip = client._replace(crl=File("", "")), settings.auto_tls
    else:
        forward_side, skip = peer, settings.auto_tls or settings.peer_auto_tls
    forward = LiveContext("forwarding", partial(client_context, forward_side, ciphers, not skip),
                          [f.path for f in forward_side], verifies=not skip)
    peer_live = LiveContext("member list", partial(client_context, peer, ciphers,
                                                   not settings.peer_auto_tls),
                            [f.path for f in peer], verifies=not settings.peer_auto_tls)
    return TLS(server, forward, peer_live)


# --- requests ------------------------------------------------------------------------------


class ContextAdapter(HTTPAdapter):
    """requests' adapter making https connections with a LiveContext (None: requests' own).

    When the LiveContext took renewed files, the pools are dropped so that new
    connections use them (connections in use finish first).  Verification
    follows the context, whatever the session says, and a failed handshake is
    recorded with the LiveContext (one log line per member and reason).
    """

    def __init__(self, live, **kwargs):
        self.live = live
        self._context = None
        self._pool_args = None
        super().__init__(**kwargs)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        self._pool_args = (connections, maxsize, block)
        if self._context is not None:
            pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def send(self, request, **kwargs):
        live = self.live
        if live is None or not request.url.startswith("https:"):
            return super().send(request, **kwargs)
        context = live.context
        if context is not self._context:
            self._context = context
            self.poolmanager.clear()
            self.init_poolmanager(*self._pool_args)
        kwargs["verify"] = live.verifies
        member = urlsplit(request.url).netloc
        try:
            response = super().send(request, **kwargs)
        except requests.exceptions.SSLError as exc:
            live.failed(member, exc)
            raise
        live.succeeded(member)
        return response
