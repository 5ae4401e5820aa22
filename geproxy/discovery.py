"""geproxy.discovery: learn the first peer URLs from a discovery service or DNS SRV.

``discover`` speaks the etcd v2 discovery protocol: the discovery URL's path is
a token directory in an etcd v2 keys store; ``_config/size`` says how many
members the cluster has, and each member registers itself as a child key
whose value is ``name=peerURL[,name=peerURL]``.  A proxy only reads: it never
registers (it must not take a member slot), and it waits until ``size``
members are registered, then uses the first ``size`` by creation order.

Differences from the Go code, on purpose:
* members are counted from the directory listing, re-read after every watch
  event, so only keys that exist count (created or set); the Go code counted
  every watch event, so an update or a delete made it stop waiting too early;
* an answer that is JSON but not an etcd node is a clear error, not a crash;
* the retry back-off for an unreachable service is capped at
  ``BACKOFF_CAP`` seconds (Go: 256 s), so a service that comes back is used soon.

``srv_peer_urls`` reads ``_etcd-server-ssl._tcp.<domain>`` (https) and
``_etcd-server._tcp.<domain>`` (http) with dnspython and uses both kinds
(etcd 3.4 ignored the http ones, etcd issue #11321).
"""

import ipaddress
import json
import logging
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import requests

from geproxy.errors import DiscoveryError
from geproxy.values import host_port

log = logging.getLogger("geproxy.discovery")

# Seconds.  Module constants so tests can shrink them.
BACKOFF_START = 1.0  # first wait after the discovery service could not be reached
BACKOFF_CAP = 32.0  # longest wait between two tries
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0  # a plain read (size key, directory listing)
WATCH_TIMEOUT = 300.0  # a watch with no event for this long is simply re-made
DNS_TIMEOUT = 5.0  # per SRV / address lookup

EVENT_INDEX_CLEARED = 401  # etcd v2 errorCode: waitIndex older than the kept history
KEY_NOT_FOUND = 100


class Unreachable(Exception):
    """The discovery service did not answer usefully this time; try again later."""


def _progress_message(found, size):
    return "waiting for discovery: found %d of %d members" % (found, size)


class DiscoveryClient:
    """Reads one discovery token directory; retries while the service is unreachable.

    ``sleep`` is injectable so unit tests need not wait; ``backoff`` is
    ``(start, cap)`` in seconds (defaults: the module constants, read at call
    time so tests can patch them).
    """

    def __init__(self, url, proxy="", progress=None, session=None, sleep=time.sleep,
                 backoff=None):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DiscoveryError("discovery: %r is not an http(s) URL" % url)
        # The token directory: scheme://host[:port]/path, without query or fragment.
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.session = session or requests.Session()
        self.session.trust_env = False  # only --discovery-proxy may route this traffic
        if proxy:
            self.session.proxies = {"http": proxy, "https": proxy}
        self.progress = progress
        self.sleep = sleep
        self.backoff = backoff
        self._last_progress = None
        self._watch_delay = self._backoff()[0]

    # --- reporting --------------------------------------------------------------------

    def report(self, message):
        """Tell the caller (503 answers, config endpoint) when the state changes."""
        if message != self._last_progress:
            self._last_progress = message
            if self.progress is not None:
                self.progress(message)

    # --- HTTP -------------------------------------------------------------------------

    def _get_once(self, url, params=None, read_timeout=REQUEST_TIMEOUT):
        """One GET: (status, X-Etcd-Index or None, JSON document); Unreachable if
        the service cannot be reached or answers 5xx; DiscoveryError if the
        answer is not JSON."""
        try:
            resp = self.session.get(url, params=params,
                                    timeout=(CONNECT_TIMEOUT, read_timeout))
        except requests.Timeout as exc:
            raise Unreachable("%s: timed out (%s)" % (url, type(exc).__name__)) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as exc:  # retrying cannot help
            raise DiscoveryError("discovery: cannot ask %s: %s" % (url, _one_line(exc))) from None
        except requests.RequestException as exc:
            raise Unreachable("%s: %s" % (url, _one_line(exc))) from None
        if resp.status_code >= 500:
            raise Unreachable("%s: HTTP %d" % (url, resp.status_code))
        try:
            doc = json.loads(resp.content)
        except ValueError:
            raise DiscoveryError(
                "discovery: bad discovery endpoint: %s answered HTTP %d that is not JSON "
                "(starts %r)" % (url, resp.status_code, resp.content[:40])) from None
        index = resp.headers.get("X-Etcd-Index")
        try:
            index = int(index) if index is not None else None
        except ValueError:
            index = None
        return resp.status_code, index, doc

    def get(self, url, params=None, read_timeout=REQUEST_TIMEOUT):
        """``_get_once`` retried with capped exponential back-off while unreachable."""
        start, cap = self._backoff()
        delay = start
        while True:  # as etcd: for as long as the service stays away
            try:
                return self._get_once(url, params, read_timeout)
            except Unreachable as exc:
                log.warning("discovery service unreachable (%s); retrying in %.1fs",
                            exc, delay)
                self.report("waiting for discovery: cannot reach the discovery service "
                            "at %s" % self.url)
                self.sleep(delay)
                delay = min(delay * 2, cap)

    def _backoff(self):
        return self.backoff or (BACKOFF_START, BACKOFF_CAP)

    # --- the protocol -----------------------------------------------------------------

    def size(self):
        """The cluster size from ``<token>/_config/size``."""
        url = self.url + "/_config/size"
        status, _, doc = self.get(url)
        if status == 404 and _error_code(doc) == KEY_NOT_FOUND:
            raise DiscoveryError("discovery: size key not found: %s does not exist "
                                 "(is the token right, and was its size set?)" % url)
        node = _node(doc, status, url)
        value = node.get("value")
        try:
            size = int(str(value).strip()) if isinstance(value, (str, int)) else None
        except ValueError:
            size = None
        if size is None or size < 1:
            raise DiscoveryError("discovery: size key is bad: %s holds %r, want a "
                                 "positive integer" % (url, value))
        return size

    def registered(self):
        """(registrations sorted by createdIndex, X-Etcd-Index of the listing)."""
        status, index, doc = self.get(self.url)
        if status == 404 and _error_code(doc) == KEY_NOT_FOUND:
            raise DiscoveryError("discovery: token directory %s does not exist" % self.url)
        node = _node(doc, status, self.url)
        if not node.get("dir"):
            raise DiscoveryError("discovery: %s is not a token directory (a plain key)"
                                 % self.url)
        children = node.get("nodes", [])
        if not isinstance(children, list):
            raise DiscoveryError("discovery: unexpected answer from %s: 'nodes' is not "
                                 "a list" % self.url)
        members = []
        for child in children:
            if not isinstance(child, dict) or not isinstance(child.get("key"), str):
                raise DiscoveryError("discovery: unexpected answer from %s: a child node "
                                     "has no key" % self.url)
            if child["key"].rstrip("/").rsplit("/", 1)[-1] == "_config" or child.get("dir"):
                continue
            created, value = child.get("createdIndex"), child.get("value")
            if not isinstance(created, int) or not isinstance(value, str):
                raise DiscoveryError("discovery: unexpected answer from %s: registration "
                                     "%s lacks createdIndex or value" % (self.url, child["key"]))
            members.append((created, child["key"], value))
        members.sort()
        if index is None:
            index = max([m[0] for m in members] + [node.get("modifiedIndex") or 0])
        return members, index

    def wait_change(self, index):
        """Block until something under the token changes after ``index`` (or the
        watch times out, or etcd's event history no longer reaches back)."""
        params = {"wait": "true", "recursive": "true", "waitIndex": str(index + 1)}
        try:
            status, _, doc = self._get_once(self.url, params, read_timeout=WATCH_TIMEOUT)
        except Unreachable as exc:
            # The listing that follows retries (and logs) while the service is
            # away; pause here only so a watch that keeps failing at once
            # (while listings work) cannot spin.
            log.info("discovery watch ended (%s); listing again", exc)
            self.sleep(self._watch_delay)
            self._watch_delay = min(self._watch_delay * 2, self._backoff()[1])
            return
        self._watch_delay = self._backoff()[0]
        if status == 400 and _error_code(doc) == EVENT_INDEX_CLEARED:
            return  # re-list: the listing is the truth anyway
        if status != 200 or not isinstance(doc, dict) or "action" not in doc:
            raise DiscoveryError("discovery: unexpected answer to a watch on %s: HTTP %d %s"
                                 % (self.url, status, _describe(doc)))
        log.debug("discovery event %s on %s", doc.get("action"),
                  (doc.get("node") or {}).get("key"))

    def discover(self):
        """Wait for ``size`` registrations and return their peer URLs."""
        size = self.size()
        found = None
        while True:  # ends when enough have registered; waits as long as etcd would
            members, index = self.registered()
            if len(members) >= size:
                break
            if len(members) != found:
                found = len(members)
                log.info("found %d peer(s), waiting for %d more", found, size - found)
            self.report(_progress_message(found, size))
            # One watch at a time, then re-list: an event (or a timed-out
            # watch) only says "look again", so updates and deletes cannot
            # be mistaken for new members.
            self.wait_change(index)
        if len(members) > size:
            log.info("discovery cluster is full (%d registered); using the first %d",
                     len(members), size)
        urls = parse_registrations(members[:size], self.url)
        log.info("found %d needed peer(s): %s", size, urls)
        return urls


def parse_registrations(members, where):
    """Peer URLs from ``(createdIndex, key, "name=url[,name=url]")`` registrations.

    A name may list several URLs within one registration; the same name in two
    registrations means two processes claimed one member: an error, as etcd.
    """
    owner = {}
    urls = []
    for _, key, value in members:
        for item in value.split(","):
            name, sep, url = item.strip().partition("=")
            if not sep or not name:
                raise DiscoveryError("discovery: invalid registration %s=%r at %s: want "
                                     "name=peerURL" % (key, value, where))
            if owner.setdefault(name, key) != key:
                raise DiscoveryError("discovery: found duplicate name %r (registrations %s "
                                     "and %s at %s)" % (name, owner[name], key, where))
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https", "unix", "unixs") or not parts.netloc \
                    or parts.path not in ("", "/"):
                raise DiscoveryError("discovery: invalid URL %r in registration %s at %s"
                                     % (url, key, where))
            urls.append(url)
    return urls


def _error_code(doc):
    return doc.get("errorCode") if isinstance(doc, dict) else None


def _describe(doc):
    """A short one-line picture of an unexpected JSON answer."""
    if isinstance(doc, dict) and "errorCode" in doc:
        return "%s: %s (%s)" % (doc.get("errorCode"), doc.get("message"), doc.get("cause"))
    text = json.dumps(doc)
    return text if len(text) <= 80 else text[:77] + "..."


def _node(doc, status, url):
    """The ``node`` object of a 200 etcd answer, or a one-line DiscoveryError."""
    if status != 200:
        raise DiscoveryError("discovery: %s answered HTTP %d: %s" % (url, status, _describe(doc)))
    node = doc.get("node") if isinstance(doc, dict) else None
    if not isinstance(node, dict):
        raise DiscoveryError("discovery: unexpected answer from %s: not an etcd v2 "
                             "keys answer: %s" % (url, _describe(doc)))
    return node


def _one_line(exc):
    return " ".join(str(exc).split())


def discover(url, proxy="", progress=None):
    """The peer URLs of the cluster registered under the discovery URL ``url``.

    Blocks until the cluster has registered all its members; ``progress`` is
    called with a one-line state ("waiting for discovery: found N of M
    members") whenever it changes.  Raises DiscoveryError on a definite error.
    """
    client = DiscoveryClient(url, proxy=proxy, progress=progress)
    try:
        return client.discover()
    finally:
        client.session.close()


# --- DNS SRV ---------------------------------------------------------------------------

SRV_KINDS = (("https", "_etcd-server-ssl"), ("http", "_etcd-server"))


def make_resolver(resolver=""):
    """A dnspython resolver: the system's, or only ``host:port`` when given.

    A given resolver is the only nameserver asked (tests point it at a DNS
    server on loopback; nothing else is consulted)."""
    import dns.resolver

    if not resolver:
        try:
            res = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise DiscoveryError("discovery-srv: no DNS resolver configured (%s); "
                                 "set --discovery-srv-resolver" % _one_line(exc)) from None
    else:
        host, _, port = resolver.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            address = host
        except ValueError:  # a name: the system resolves the resolver itself
            try:
                address = socket.getaddrinfo(host, None)[0][4][0]
            except OSError as exc:
                raise DiscoveryError("discovery-srv: cannot resolve the resolver %r: %s"
                                     % (host, exc)) from None
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [address]
        res.port = int(port)
    res.timeout = res.lifetime = DNS_TIMEOUT
    return res


def _addresses(res, target):
    """IP addresses of ``target`` from ``res`` (A, then AAAA); [] if none."""
    import dns.exception
    import dns.resolver

    try:
        ipaddress.ip_address(target)
        return [target]
    except ValueError:
        pass
    found = []
    for rdtype in ("A", "AAAA"):
        try:
            found.extend(r.address for r in res.resolve(target, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            log.warning("discovery-srv: looking up %s %s failed: %s", rdtype, target,
                        _one_line(exc))
    return found


def lookup_srv(domain, name, res, resolve_targets):
    """Peer URLs from the SRV records of both kinds, https ones first.

    With ``resolve_targets`` each target is replaced by its addresses as
    ``res`` knows them (a private resolver: the system's one that later
    fetches /members may not know these names); otherwise the target name
    is kept, as etcd does (and TLS can verify it).
    """
    import dns.exception
    import dns.resolver

    domain = domain.strip().rstrip(".")
    suffix = "-" + name if name else ""
    urls, problems = [], []
    for scheme, service in SRV_KINDS:
        qname = "%s%s._tcp.%s." % (service, suffix, domain)
        try:
            answer = res.resolve(qname, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            problems.append("%s: no SRV records" % qname.rstrip("."))
            continue
        except dns.exception.DNSException as exc:
            problems.append("%s: %s" % (qname.rstrip("."), _one_line(exc)))
            log.warning("discovery-srv: SRV lookup of %s failed: %s", qname, _one_line(exc))
            continue
        records = sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target)))
        for record in records:
            target = record.target.to_text().rstrip(".")
            if not target:  # "." means: no such service here (RFC 2782)
                continue
            hosts = _addresses(res, target) if resolve_targets else [target]
            if not hosts:
                log.warning("discovery-srv: SRV target %s of %s has no address; skipped",
                            target, qname)
            for host in hosts:
                urls.append("%s://%s" % (scheme, host_port(host, record.port)))
    if not urls:
        raise DiscoveryError("discovery-srv: no peer URLs found for %s (%s)"
                             % (domain, "; ".join(problems)))
    log.info("discovery-srv: found peer URLs %s for %s", urls, domain)
    return urls


def srv_peer_urls(domain, name="", resolver=""):
    """Peer URLs from DNS SRV records of ``domain`` (http and https kinds).

    ``name`` inserts ``-<name>`` before ``._tcp``; ``resolver`` ("host:port")
    is then the only nameserver asked, and the targets are resolved through it
    too.  No record of either kind: DiscoveryError.
    """
    res = make_resolver(resolver)
    return lookup_srv(domain, name, res, resolve_targets=bool(resolver))
