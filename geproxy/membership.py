"""geproxy.membership: learn the cluster's members and keep the endpoint list fresh.

At start and then every refresh interval, ``GET <peerURL>/members`` is asked of
the known peer URLs in order until one answers with a JSON array of members and
an ``X-Etcd-Cluster-ID`` header (the same test the Go proxy applies).  The
members' client URLs become the endpoints (shuffled by EndpointSet); their peer
URLs become the list asked next time (and the data dir's cluster file), so the
proxy follows membership changes.

Better than the Go proxy:
* a failed or empty read keeps the last good endpoint list (the Go proxy
  empties it and answers 503 until the next refresh);
* a client URL that points back at this proxy's own listeners is skipped with
  a warning (the Go proxy forwards to itself until file descriptors run out);
* the first peer URLs may take time to learn (discovery): the refresh greenlet
  waits for them while the listeners already answer 503;
* each refresh also asks a member which member leads (``/v2/stats/self``), so
  that writes go to the leader (endpoints.py); if no member says, writes go
  where reads go, as before.  Between refreshes the leader is asked for again
  as soon as the endpoints doubt it (it failed, or an election was seen), at
  most once every ``RELEARN_GAP`` seconds.
"""

import json
import logging
import socket
import time
from urllib.parse import urlsplit

import gevent
import requests

from geproxy.errors import MembersError
from geproxy.tls import ContextAdapter

log = logging.getLogger("geproxy.membership")

MEMBERS_TIMEOUT = 10.0  # seconds for a whole /members answer, as etcd 3.x
LEADER_TIMEOUT = 2.0  # seconds for a member's /v2/stats/self answer
FAST_RETRY = 1.0  # seconds between tries while no endpoint is known (etcd PR #3819)
RELEARN_GAP = 1.0  # seconds at least between two questions for the leader between refreshes


def fetch_members(session, peer_url, dial_timeout):
    """One peer's member list: a list of member dicts, or MembersError."""
    try:
        resp = session.get(peer_url.rstrip("/") + "/members",
                           timeout=(dial_timeout, MEMBERS_TIMEOUT), allow_redirects=False)
    except requests.RequestException as exc:
        raise MembersError("%s: %s" % (peer_url, exc)) from None
    cluster_id = resp.headers.get("X-Etcd-Cluster-ID", "")
    try:
        int(cluster_id, 16)
    except ValueError:
        raise MembersError("%s: answer has no valid X-Etcd-Cluster-ID header" % peer_url) from None
    try:
        members = json.loads(resp.content)
    except ValueError as exc:
        raise MembersError("%s: answer is not JSON (%s)" % (peer_url, exc)) from None
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise MembersError("%s: answer is not a JSON array of members" % peer_url)
    return members


def fetch_leader(session, client_url, members, dial_timeout):
    """The leader's client URLs, as the member at ``client_url`` knows it; MembersError
    if it cannot say (no answer, no leader, a leader not in ``members``)."""
    try:
        # closed after: kept open, it would be one more connection to a member
        resp = session.get(client_url.rstrip("/") + "/v2/stats/self",
                           headers={"Connection": "close"},
                           timeout=(dial_timeout, LEADER_TIMEOUT), allow_redirects=False)
        leader = int(json.loads(resp.content)["leaderInfo"]["leader"], 16)
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise MembersError("%s: no leader in /v2/stats/self (%s)" % (client_url, exc)) from None
    for member in members:
        if member.get("id") == leader:
            return _urls([member], "clientURLs")
    raise MembersError("%s: leader %x is not in the member list" % (client_url, leader))


def _urls(members, key):
    urls = []
    for member in members:
        value = member.get(key) or []
        if isinstance(value, list):
            urls.extend(u for u in value if isinstance(u, str))
    return sorted(urls)


class SelfAddresses:
    """Recognises URLs that point at this proxy's own listeners (loop guard)."""

    _WILDCARD = ("0.0.0.0", "::")

    def __init__(self, listen_addresses):
        self._ports = {}
        for host, port in listen_addresses:
            self._ports.setdefault(port, set()).update(self._resolve(host))

    @staticmethod
    def _resolve(host):
        try:
            return {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return {host}

    def _local(self, ip):
        return ip.startswith("127.") or ip == "::1"

    def __contains__(self, url):
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        listen_ips = self._ports.get(port)
        if not listen_ips:
            return False
        for ip in self._resolve(parts.hostname or ""):
            if ip in listen_ips:
                return True
            if listen_ips & set(self._WILDCARD) and (self._local(ip) or ip in self._WILDCARD):
                return True
        return False


class Membership:
    """Owns the peer URL list and the refresh greenlet; feeds an EndpointSet.

    ``initial_peers`` is a callable giving the first peer URLs (it may block,
    e.g. for discovery); ``cluster_file`` (optional) stores the peer URLs
    after a read that changed them; ``on_fatal`` is called with the error if
    ``initial_peers`` fails for good; ``tls_context`` (a tls.LiveContext)
    makes the connections to https peer URLs, ``client_tls_context`` those to
    https client URLs (asking which member leads).
    """

    def __init__(self, initial_peers, endpoints, refresh_interval, dial_timeout,
                 cluster_file=None, self_addresses=None, on_fatal=None, tls_context=None,
                 client_tls_context=None):
        self._initial_peers = initial_peers
        self.peer_urls = []
        self.endpoints = endpoints
        self.refresh_interval = refresh_interval
        self.dial_timeout = dial_timeout or None
        self.cluster_file = cluster_file
        self.self_addresses = self_addresses or ()
        self.on_fatal = on_fatal
        self.last_refresh = None  # (wall time, ok, detail)
        self.last_ok = None  # monotonic time of the last successful read
        self.refreshes = {"ok": 0, "failed": 0}  # reads so far, by result (metrics)
        self.waiting = "waiting for the first member list"
        self._session = requests.Session()
        self._session.trust_env = False  # never send /members through an env proxy
        if tls_context is not None:
            self._session.mount("https://", ContextAdapter(tls_context))
        self._client_session = requests.Session()  # to client URLs, for the leader
        self._client_session.trust_env = False
        if client_tls_context is not None:
            self._client_session.mount("https://", ContextAdapter(client_tls_context))
        self._members = None  # the last member list read (to map a leader's id to URLs)
        self._greenlet = None

    def _client_urls(self, members):
        urls = []
        for url in _urls(members, "clientURLs"):
            if url in self.self_addresses:
                log.warning("skipping endpoint %s: it points at this proxy (forwarding loop)",
                            url)
            else:
                urls.append(url)
        return urls

    def refresh(self):
        """Read the member list once; on success replace the endpoints. True if ok."""
        errors = []
        for peer_url in list(self.peer_urls):
            try:
                members = fetch_members(self._session, peer_url, self.dial_timeout)
            except MembersError as exc:
                errors.append(str(exc))
                continue
            client_urls = self._client_urls(members)
            if not client_urls:
                errors.append("%s: cluster lists no usable client URLs" % peer_url)
                break  # as etcd: an empty but valid answer ends this round
            self.endpoints.replace(client_urls)
            self._members = members
            self._learn_leader(members)
            new_peers = _urls(members, "peerURLs")
            if new_peers and new_peers != self.peer_urls:
                log.info("updated peer urls from %s to %s", self.peer_urls, new_peers)
                self.peer_urls = new_peers
            self._store_peers()
            self.waiting = None
            self.last_refresh = (time.time(), True, "%d endpoint(s) from %s"
                                 % (len(client_urls), peer_url))
            self.last_ok = time.monotonic()
            self.refreshes["ok"] += 1
            log.debug("refreshed members from %s: %s", peer_url, client_urls)
            return True
        detail = "; ".join(errors) or "no peer URLs"
        log.warning("could not read the member list (%s); keeping %d known endpoint(s)",
                    detail, len(self.endpoints.all()))
        self.last_refresh = (time.time(), False, detail)
        self.refreshes["failed"] += 1
        return False

    def _learn_leader(self, members):
        """Ask the available members in turn which member leads; tell the endpoints."""
        self.endpoints.leader_doubted.clear()  # what is learned now answers any doubt so far
        leader, errors = [], []
        for ep in self.endpoints.available():
            try:
                leader = fetch_leader(self._client_session, ep.url, members, self.dial_timeout)
                break
            except MembersError as exc:
                errors.append(str(exc))
        if set(leader) != self.endpoints.leader_urls:
            if leader:
                log.info("leader is %s", ", ".join(leader))
            else:
                log.warning("no member named the leader (%s); writes go where reads go",
                            "; ".join(errors) or "no endpoints")
        self.endpoints.set_leader(leader)

    def _store_peers(self):
        if self.cluster_file is None:
            return
        try:
            self.cluster_file.write(self.peer_urls)
        except OSError as exc:  # forwarding goes on; the next change tries again
            log.warning("could not write cluster file %s: %s", self.cluster_file.path, exc)

    def next_delay(self):
        """Seconds until the next refresh: the interval, or 1 s while nothing is known."""
        if self.refresh_interval >= 30.0 and not self.endpoints.available():
            return FAST_RETRY
        return self.refresh_interval

    def status(self):
        """Extra fields for /v2/config/local/proxy (additive to the Go format)."""
        doc = {
            "failed": [{"endpoint": ep.url, "retry_in_ms": int(left * 1000)}
                       for ep, left in self.endpoints.failed()],
            "peerURLs": list(self.peer_urls),
            "leader": sorted(self.endpoints.leader_urls),
        }
        if self.waiting:
            doc["waiting"] = self.waiting
        if self.last_refresh is not None:
            when, ok, detail = self.last_refresh
            doc["lastRefresh"] = {
                "time": "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)),
                                      int(when * 1000) % 1000),
                "ok": ok, "detail": detail}
        return doc

    def run(self):
        """Learn the first peer URLs, then refresh forever."""
        try:
            self.peer_urls = sorted(self._initial_peers())
        except Exception as exc:  # a bad cluster file, failed discovery: fatal
            if self.on_fatal is None:
                raise
            self.on_fatal(exc)
            return
        self.waiting = "waiting for the first member list from %s" % ", ".join(self.peer_urls)
        while True:
            try:
                self.refresh()
            except Exception:  # keep refreshing whatever one round did
                log.exception("member refresh failed unexpectedly")
            self.wait(max(self.next_delay(), 0.01))

    def wait(self, delay):
        """Sleep ``delay`` seconds, asking again which member leads whenever the
        endpoints doubt the leader they have (at most once every RELEARN_GAP)."""
        doubted = self.endpoints.leader_doubted
        until = time.monotonic() + delay
        while True:
            left = until - time.monotonic()
            if left <= 0 or not doubted.wait(left):
                return
            if self._members is None:  # no member list yet: the next refresh learns it
                doubted.clear()
                continue
            try:
                self._learn_leader(self._members)
            except Exception:  # keep waiting whatever one question did
                log.exception("asking for the leader failed unexpectedly")
            gevent.sleep(min(RELEARN_GAP, max(until - time.monotonic(), 0)))

    def start(self):
        self._greenlet = gevent.spawn(self.run)
        return self._greenlet

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self._session.close()
        self._client_session.close()
