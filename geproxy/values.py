"""geproxy.values: the value parsers of the settings table, text in, value out.

Each takes the text of one flag or ``ETCD_*`` variable and returns the value
the proxy uses, or raises ``SettingError`` saying what is wrong with it;
``settings`` adds the flag's name to the message.  The URL checks follow
etcd's: a known scheme, host:port, no path.
"""

import ssl
from urllib.parse import urlsplit

from geproxy.errors import SettingError


def parse_mode(text):
    value = text.strip().lower()
    if value == "off":
        raise SettingError(
            "this program only runs as a proxy: use 'on' or 'readonly' "
            "(run etcd itself for a member)")
    if value not in ("on", "readonly"):
        raise SettingError("must be 'on' or 'readonly'")
    return value


def parse_ms(text):
    """Milliseconds as a whole, non-negative number, as etcd's uint flags."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise SettingError("must be a whole number of milliseconds (e.g. 5000)")
    return int(value)


def parse_count(text):
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise SettingError("must be a whole, non-negative number")
    return int(value)


GO_TRUE = frozenset(("1", "t", "T", "true", "TRUE", "True"))  # Go's strconv.ParseBool
GO_FALSE = frozenset(("0", "f", "F", "false", "FALSE", "False"))


def parse_bool(text):
    """Go's strconv.ParseBool spellings."""
    value = text.strip()
    if value in GO_TRUE:
        return True
    if value in GO_FALSE:
        return False
    raise SettingError("must be true or false")


def parse_text(text):
    return text


def choice(*values, aliases=None):
    """A parser that accepts one of ``values`` (any case; ``aliases`` map spellings)."""
    aliases = aliases or {}

    def parse(text):
        value = text.strip().lower()
        value = aliases.get(value, value)
        if value not in values:
            raise SettingError("must be one of " + ", ".join(values))
        return value
    return parse


TRANSPORTS = ("native", "requests")
BALANCES = ("least-connections", "first")
parse_transport = choice(*TRANSPORTS)
parse_balance = choice(*BALANCES)
parse_log_level = choice("debug", "info", "warn", "error", aliases={"warning": "warn"})
parse_log_format = choice("text", "json", aliases={"console": "text"})  # etcd 3.5's spelling
parse_metrics = choice("basic", "extensive", "off")  # etcd's two levels; "off" is ours


def parse_positive(text):
    value = parse_count(text)
    if value < 1:
        raise SettingError("must be at least 1")
    return value


def parse_discovery_url(text):
    """A discovery URL: http(s)://host[:port]/path-to-token (empty = not used)."""
    raw = text.strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError("%r is not an http(s) URL" % raw)
    if parts.path in ("", "/"):
        raise SettingError("%r has no token path" % raw)
    return raw.rstrip("/")


def parse_optional_url(text):
    """An http URL or empty; 'host:port' gets http:// prepended, as etcd does."""
    raw = text.strip()
    if not raw:
        return ""
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError("%r is not an http(s) URL" % text)
    return raw


def host_port(host, port):
    """'host:port' as a URL or a dialer writes it: an IPv6 address in brackets."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def parse_host_port(text):
    """'host:port' or 'host' (port 53) or empty."""
    raw = text.strip()
    if not raw:
        return ""
    try:
        parts = urlsplit("//" + raw)
        port = parts.port or 53
    except ValueError as exc:
        raise SettingError("%r is not host:port (%s)" % (raw, exc)) from None
    if not parts.hostname:
        raise SettingError("%r has no host" % raw)
    return "%s:%d" % (parts.hostname, port)


def _host_port_url(text, what, schemes):
    """Check one URL the way etcd does: a known scheme, host:port, no path."""
    raw = text.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise SettingError("%r is not a valid %s URL (%s)" % (raw, what, exc)) from None
    if parts.scheme not in schemes:
        raise SettingError("%r: scheme must be %s" % (raw, " or ".join(schemes)))
    if not parts.hostname:
        raise SettingError("%r has no host" % raw)
    if port is None:
        raise SettingError("%r must have the form scheme://host:port (no port given)" % raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SettingError("%r must not have a path or query" % raw)
    if parts.username is not None:
        raise SettingError("%r must not carry credentials" % raw)
    return "%s://%s" % (parts.scheme, parts.netloc)


def _unix_url(text):
    """``unix://path``: a Unix socket at that path (relative or absolute); etcd's
    ``unix://host:port`` form names a socket file ``host:port``, and so does this."""
    raw = text.strip()
    if raw.startswith("unixs:"):
        raise SettingError("%r: unixs:// (TLS on a Unix socket) is not supported" % raw)
    path = raw[len("unix://"):] if raw.startswith("unix://") else ""
    if not path or "?" in path or "#" in path:
        raise SettingError("%r must have the form unix://path" % raw)
    return "unix://" + path


def parse_listen_urls(text):
    urls = [item for item in (part.strip() for part in text.split(",")) if item]
    if not urls:
        raise SettingError("needs at least one URL")
    out = [_unix_url(url) if url.startswith("unix") else
           _host_port_url(url, "listen", ("http", "https")) for url in urls]
    if len(set(out)) != len(out):
        raise SettingError("lists the same URL twice")
    return tuple(out)


def parse_url_list(text):
    """A comma list of http(s) URLs (member-only flags we accept and ignore)."""
    return tuple(_host_port_url(u, "member", ("http", "https"))
                 for u in text.split(",") if u.strip())


def parse_initial_cluster(text):
    """``name=peerURL,...`` -> tuple of (name, peerURL); only the URLs are used."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise SettingError("needs at least one name=peerURL entry")
    out = []
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise SettingError("%r is not of the form name=peerURL" % item)
        out.append((name.strip(), _host_port_url(url, "peer", ("http", "https"))))
    return tuple(out)


# etcd's --cipher-suites names (Go's crypto/tls) -> OpenSSL's.  TLS 1.3 suites
# cannot be chosen, in Go as in OpenSSL: accepted, and nothing to set.
GO_CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}


def parse_cipher_suites(text):
    """etcd's comma-separated suite names -> OpenSSL's cipher list ("": its defaults)."""
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        if name and name not in GO_CIPHER_SUITES:
            raise SettingError("unexpected TLS cipher suite %r (etcd's names, e.g. "
                               "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)" % name)
        if name and GO_CIPHER_SUITES[name]:
            chosen.append(GO_CIPHER_SUITES[name])
    ciphers = ":".join(chosen)
    if ciphers:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
        except ssl.SSLError:
            raise SettingError("this OpenSSL supports none of these suites") from None
    return ciphers


CORS_SCHEMES = ("http", "https", "unix", "unixs")


def parse_cors(text):
    """``--cors`` as etcd 3.4: ``*`` (every origin), or a comma list of origins, each
    scheme://host:port with scheme http, https, unix or unixs and no path (Go's
    types.NewURLs); ``--cors ''`` and lists mixing ``*`` with origins are refused."""
    if text.strip() == "*":
        return ("*",)
    out = []
    for item in text.split(","):
        raw = item.strip()
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise SettingError("%r is not a valid origin URL (%s)" % (raw, exc)) from None
        if parts.scheme not in CORS_SCHEMES:
            raise SettingError("%r: URL scheme must be http, https, unix, or unixs "
                               "(or the whole value '*')" % raw)
        if port is None:
            raise SettingError('URL address does not have the form "host:port": %s' % raw)
        if parts.path or parts.query or parts.fragment:
            raise SettingError("URL must not contain a path: %s" % raw)
        out.append("%s://%s" % (parts.scheme, parts.netloc))
    return tuple(dict.fromkeys(out))
