"""geproxy.settings: every flag and environment variable, from one table.

The table (``SETTINGS``) is the single source of truth: it builds the
argument parser, reads the ``ETCD_*`` environment, and renders the flag table
in README.md (``python -m geproxy.settings --markdown``), so the three cannot
drift apart.  Spellings follow etcd (Go's flag package): ``-flag value``,
``--flag value``, ``-flag=value`` and ``--flag=value`` are all accepted.

Bad input ends the process with exit status 2 and one line naming the flag and
the problem; nothing is half-applied.  The value parsers are in ``values``.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from geproxy.errors import SettingError, UsageError
from geproxy.values import (
    parse_balance, parse_bool, parse_cipher_suites, parse_cors,
    parse_count, parse_discovery_url, parse_host_port, parse_initial_cluster,
    parse_listen_urls, parse_log_format, parse_log_level, parse_metrics, parse_mode, parse_ms,
    parse_optional_url, parse_positive, parse_text, parse_transport, parse_url_list)

PROG = "gevent-etcdproxy"
ENV_PREFIX = "ETCD_"


# --- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One flag: its name (as after the dashes), parser, default text and help."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    ignored: bool = False  # accepted for etcd compatibility, has no effect
    boolean: bool = False  # may be given without a value (``--enable-v2``)
    fallback_env: str = ""  # a platform variable read when ETCD_<FLAG> is unset

    @property
    def attr(self):
        return self.name.replace("-", "_")

    @property
    def env(self):
        return ENV_PREFIX + self.attr.upper()

    @property
    def flags(self):
        return ("--" + self.name, "-" + self.name)


SETTINGS = (
    Setting("proxy", parse_mode, "on",
            "Proxy mode: 'on' forwards everything, 'readonly' forwards only GET "
            "(other methods get 501). 'off' is refused: this program is only a proxy."),
    Setting("listen-client-urls", parse_listen_urls, "http://localhost:2379",
            "Comma-separated http://host:port or https://host:port URLs to listen on for "
            "client traffic (https needs --cert-file and --key-file, or --auto-tls); IPv6 "
            "hosts in brackets; unix://path listens on a Unix socket."),
    Setting("initial-cluster", parse_initial_cluster, "default=http://localhost:2380",
            "Comma-separated name=peerURL list of the cluster's members; the proxy "
            "reads the member list from these peer URLs (only the URLs are used)."),
    Setting("data-dir", parse_text, "",
            "Directory for the proxy's state; empty means '<name>.etcd', as etcd."),
    Setting("name", parse_text, "default",
            "Name of this proxy; only used for the default data dir."),
    Setting("proxy-refresh-interval", parse_ms, "30000",
            "Milliseconds between member-list refreshes (each refresh also reshuffles "
            "the endpoints)."),
    Setting("proxy-failure-wait", parse_ms, "5000",
            "Milliseconds an endpoint is skipped after a transport error."),
    Setting("proxy-dial-timeout", parse_ms, "1000",
            "Milliseconds to connect to a member; 0 means no limit."),
    Setting("proxy-write-timeout", parse_ms, "5000",
            "Milliseconds allowed for each write to a member; 0 means no limit."),
    Setting("proxy-read-timeout", parse_ms, "0",
            "Milliseconds allowed for each read from a member; 0 means no limit. "
            "Leave it at 0 if clients use watches: a quiet watch is cut after this time."),
    Setting("proxy-max-request-bytes", parse_count, "4194304",
            "Largest request body accepted, in bytes; bodies are buffered so that a "
            "safe retry sends the same bytes. Larger bodies get 413."),
    Setting("proxy-header-timeout", parse_ms, "5000",
            "Milliseconds to wait for a member's response headers on non-watch requests; "
            "after it the member is marked failed, GET and HEAD go to the next member and "
            "other methods get 504. Watches are exempt. 0 means no limit."),
    Setting("proxy-transport", parse_transport, "native",
            "Upstream HTTP client: 'native' (geproxy's own keep-alive HTTP/1.1 client, the "
            "fastest) or 'requests' (a requests.Session per member)."),
    Setting("proxy-pipeline", parse_count, "2",
            "Connections per member that GETs of keys (not watches or quorum reads) share, "
            "pipelined, the requests of one event-loop turn written together (native "
            "transport); fewer connections and system calls on both sides. With --workers "
            "the workers share them out (each at least one). 0 gives each request a "
            "connection of its own."),
    Setting("proxy-balance", parse_balance, "least-connections",
            "'least-connections' binds each new client connection to the available member "
            "with the fewest bound connections (its requests stay there while that member "
            "is available), and sends writes to the leader, binding the writing connection "
            "there; 'first' sends everything to the first available endpoint, as the Go "
            "proxy."),
    Setting("workers", parse_positive, "1",
            "Processes sharing the listening sockets; from WEB_CONCURRENCY when neither "
            "the flag nor ETCD_WORKERS is set.", fallback_env="WEB_CONCURRENCY"),
    Setting("proxy-coalesce-watches", parse_bool, "true",
            "Let identical concurrent one-shot watches (same path, query and "
            "Authorization) share one upstream request.", boolean=True),
    Setting("proxy-client-idle-timeout", parse_ms, "300000",
            "Milliseconds a keep-alive client connection may sit idle between requests "
            "before it is closed; connections waiting on a watch are exempt. 0 means never."),
    Setting("proxy-client-header-timeout", parse_ms, "10000",
            "Milliseconds a client has to finish a request head once it started one, and "
            "for each read of a request body; past it the connection is closed (slow or "
            "stalled clients). 0 means no limit."),
    Setting("proxy-busy-poll", parse_count, "200",
            "Microseconds the event loop polls for its next event before it sleeps, while "
            "most of its recent waits were that short: an answer that arrives meanwhile is "
            "taken without a wake-up (with few clients this halves the proxy's added "
            "latency). 0 means sleep at once."),
    Setting("proxy-max-connections", parse_count, "0",
            "Most client connections per process; new ones beyond it are shed quickly. "
            "0 means limited only by open files (the soft limit is raised to the hard one)."),
    Setting("discovery", parse_discovery_url, "",
            "Discovery URL (etcd v2 discovery protocol) to learn the peers from; the "
            "proxy waits until the cluster has bootstrapped and never registers itself."),
    Setting("discovery-srv", parse_text, "",
            "DNS domain whose SRV records (_etcd-server-ssl._tcp, _etcd-server._tcp) "
            "list the peers."),
    Setting("discovery-srv-name", parse_text, "",
            "Suffix for the SRV names (_etcd-server-<name>._tcp...)."),
    Setting("discovery-srv-resolver", parse_host_port, "",
            "host:port of the DNS server to ask for SRV records; empty means the "
            "system's resolvers."),
    Setting("discovery-proxy", parse_optional_url, "",
            "HTTP proxy used for discovery traffic only."),
    Setting("log-level", parse_log_level, "info",
            "Log level: debug, info, warn or error. Logs go to stdout."),
    Setting("log-format", parse_log_format, "text",
            "Log line format: 'text', or 'json' (one object per line with level, ts, msg "
            "and fields, as etcd 3.4's zap logger)."),
    Setting("access-log", parse_bool, "false",
            "Log one line per request: method, target, status, member, duration in ms, "
            "body bytes, client.", boolean=True),
    Setting("metrics", parse_metrics, "basic",
            "Prometheus metrics on /metrics: 'basic' or 'extensive' (etcd's values; the same "
            "here), or 'off' (nothing counted; /metrics answers 404, never a member's)."),
    Setting("cors", parse_cors, "*",
            "Comma-separated origins allowed for CORS (scheme://host:port each), or '*' for "
            "every origin, as etcd 3.4; a CORS header a member's answer already has is not "
            "added again."),
    Setting("proxy-shutdown-timeout", parse_ms, "10000",
            "Milliseconds requests in flight get to finish after SIGTERM (new connections "
            "are refused at once, idle ones closed, waiting watches ended); then the rest "
            "is cut. A second SIGTERM, or SIGINT, stops at once."),
    # TLS, as etcd 3.4's proxy reads these flags (see the README's TLS section).
    Setting("cert-file", parse_text, "",
            "Client-side TLS certificate (PEM): served on https listen URLs, and presented "
            "to https members when forwarding. Renewed files are picked up without a restart."),
    Setting("key-file", parse_text, "", "Private key (PEM) of --cert-file."),
    Setting("trusted-ca-file", parse_text, "",
            "CA certificates (PEM): https listeners require client certificates signed by "
            "them (as etcd 3.4, even without --client-cert-auth), and members' certificates "
            "are verified against them when forwarding (default: the system's CAs)."),
    Setting("client-cert-auth", parse_bool, "false",
            "Require client certificates on https listeners (verified against "
            "--trusted-ca-file, or the system's CAs without it).", boolean=True),
    Setting("client-crl-file", parse_text, "",
            "Certificate revocation list (PEM): client certificates it revokes are refused "
            "on https listeners."),
    Setting("auto-tls", parse_bool, "false",
            "Without --cert-file/--key-file, serve https listen URLs with a self-signed "
            "certificate made under <data-dir>/proxy/clientCerts; as etcd, members' "
            "certificates are then not verified when forwarding.", boolean=True),
    Setting("cipher-suites", parse_cipher_suites, "",
            "Comma-separated TLS 1.2 cipher suites in etcd's names (e.g. "
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), for listeners and member connections; "
            "empty means OpenSSL's defaults. TLS 1.3 suites are not configurable."),
    Setting("peer-cert-file", parse_text, "",
            "Peer-side TLS certificate (PEM): presented when reading /members from https "
            "peer URLs, and when forwarding if no client-side TLS flag is set."),
    Setting("peer-key-file", parse_text, "", "Private key (PEM) of --peer-cert-file."),
    Setting("peer-trusted-ca-file", parse_text, "",
            "CA certificates (PEM) that members' peer certificates are verified against "
            "(and their client certificates, when forwarding uses the peer flags)."),
    Setting("peer-crl-file", parse_text, "",
            "Certificate revocation list (PEM): members' peer certificates it revokes are "
            "refused when reading /members."),
    Setting("peer-auto-tls", parse_bool, "false",
            "Without --peer-cert-file/--peer-key-file, present a self-signed certificate "
            "made under <data-dir>/proxy/peerCerts to peers, and do not verify theirs.",
            boolean=True),
    # Member-only flags people pass to etcd: accepted so the same command line
    # works, logged at debug level, otherwise ignored.
    Setting("initial-cluster-token", parse_text, "etcd-cluster",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("initial-cluster-state", parse_text, "new",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("advertise-client-urls", parse_url_list, "http://localhost:2379",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("initial-advertise-peer-urls", parse_url_list, "http://localhost:2380",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("listen-peer-urls", parse_url_list, "http://localhost:2380",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("discovery-fallback", parse_text, "proxy",
            "Member-only; accepted and ignored.", ignored=True),
    Setting("peer-client-cert-auth", parse_bool, "false",
            "Member-only; accepted and ignored (a proxy serves no peer traffic).",
            ignored=True, boolean=True),
    Setting("enable-v2", parse_bool, "true",
            "Member-only; accepted and ignored (the proxy forwards v2 requests).",
            ignored=True, boolean=True),
)

BY_ENV = {s.env: s for s in SETTINGS}


class Settings:
    """The parsed values, one attribute per setting (``proxy_failure_wait``...)."""

    def __init__(self, values, sources, names):
        self.__dict__.update(values)
        self.sources = sources  # attr -> 'flag' | 'env' | 'default'
        self._names = names  # attr -> the --flag or variable it was given as

    @property
    def readonly(self):
        return self.proxy == "readonly"

    @property
    def data_dir_path(self):
        return self.data_dir or "%s.etcd" % self.name

    @property
    def peer_urls(self):
        return tuple(url for _name, url in self.initial_cluster)

    def given_as(self, attr):
        """How a setting was given, for messages: its --flag, ETCD_* or platform variable."""
        return self._names[attr]

    def __repr__(self):
        shown = ", ".join("%s=%r" % (s.attr, getattr(self, s.attr)) for s in SETTINGS)
        return "Settings(%s)" % shown


class _Parser(argparse.ArgumentParser):
    """argparse that fails with one line and exit 2 instead of usage text."""

    def error(self, message):
        raise UsageError(message)


def _build_parser():
    parser = _Parser(prog=PROG, allow_abbrev=False, add_help=True,
                     description="An etcd v2 proxy on gevent; a drop-in for `etcd --proxy on|readonly`.")
    for s in SETTINGS:
        kwargs = dict(dest=s.attr, default=None, metavar=s.attr.upper(),
                      help=s.help + " (env %s, default %r)" % (s.env, s.default))
        if s.boolean:
            kwargs.update(nargs="?", const="true")
        parser.add_argument(*s.flags, **kwargs)
    parser.add_argument("--version", "-version", action="version",
                        version="%s %s" % (PROG, _version()))
    return parser


def _version():
    from geproxy import __version__
    return __version__


def parse(argv=None, environ=None):
    """Parse a command line and an environment into (Settings, notes).

    ``notes`` is a list of (level, message) to log once logging is set up
    (environment variables used, flags shadowing env vars, ignored flags).
    Raises UsageError with a one-line message on any bad input.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    given = vars(_build_parser().parse_args(argv))
    values, sources, names, notes = {}, {}, {}, []
    for s in SETTINGS:
        flag_text = given[s.attr]
        env_text = environ.get(s.env, "")
        fallback_text = environ.get(s.fallback_env, "") if s.fallback_env else ""
        if flag_text is not None:
            text, source, where = flag_text, "flag", "--" + s.name
            if env_text:
                notes.append(("warning", "flag --%s=%s overrides environment variable %s=%s"
                              % (s.name, flag_text, s.env, env_text)))
        elif env_text or fallback_text:
            where = s.env if env_text else s.fallback_env
            text, source = env_text or fallback_text, "env"
            notes.append(("info", "recognized and used environment variable %s=%s"
                          % (where, text)))
        else:
            text, source, where = s.default, "default", "--" + s.name
        try:
            values[s.attr] = s.parse(text)
        except SettingError as exc:
            raise UsageError("invalid value %r for %s: %s" % (text, where, exc)) from None
        sources[s.attr] = source
        names[s.attr] = where
        if s.ignored and source != "default":
            notes.append(("debug", "ignoring member-only flag --%s (this is a proxy)" % s.name))
    for key in environ:
        if key.startswith(ENV_PREFIX) and key not in BY_ENV:
            notes.append(("warning", "unrecognized environment variable %s" % key))
    return Settings(values, sources, names), notes


def markdown_table():
    """The README's flag table, rendered from SETTINGS."""
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "`%s`" % s.default if s.default else "(empty)"
        rows.append("| `--%s` | `%s` | %s | %s |" % (s.name, s.env, default,
                                                    s.help.replace("|", "\\|")))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown_table())
    else:
        sys.stderr.write("usage: python -m geproxy.settings --markdown\n")
        sys.exit(2)
