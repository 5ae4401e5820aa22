"""geproxy.membership: learn the cluster's members and keep the endpoint list fresh.

At start and then every refresh interval, ``GET <peerURL>/members`` is asked of
the known peer URLs in order until one answers with a JSON array of members and
an ``X-Etcd-Cluster-ID`` header (the same test the Go proxy applies).  The
members' client URLs become the endpoints (shuffled by EndpointSet); their peer
URLs become the list asked next time, so the proxy follows membership changes.

Better than the Go proxy: a failed or empty read keeps the last good endpoint
list (the Go proxy empties it and answers 503 until the next refresh).
"""

import json
import logging
import time

import gevent
import requests

log = logging.getLogger("geproxy.membership")

MEMBERS_TIMEOUT = 10.0  # seconds for a whole /members answer, as etcd 3.x
FAST_RETRY = 1.0  # seconds between tries while no endpoint is known (etcd PR #3819)


class MembersError(Exception):
    """No peer URL gave a usable member list."""


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


def _urls(members, key):
    urls = []
    for member in members:
        value = member.get(key) or []
        if isinstance(value, list):
            urls.extend(u for u in value if isinstance(u, str))
    return sorted(urls)


class Membership:
    """Owns the peer URL list and the refresh greenlet; feeds an EndpointSet."""

    def __init__(self, peer_urls, endpoints, refresh_interval, dial_timeout):
        self.peer_urls = sorted(peer_urls)
        self.endpoints = endpoints
        self.refresh_interval = refresh_interval
        self.dial_timeout = dial_timeout or None
        self.last_refresh = None  # (wall time, ok, detail)
        self._session = requests.Session()
        self._session.trust_env = False  # never send /members through an env proxy
        self._greenlet = None

    def refresh(self):
        """Read the member list once; on success replace the endpoints. True if ok."""
        errors = []
        for peer_url in list(self.peer_urls):
            try:
                members = fetch_members(self._session, peer_url, self.dial_timeout)
            except MembersError as exc:
                errors.append(str(exc))
                continue
            client_urls = _urls(members, "clientURLs")
            if not client_urls:
                errors.append("%s: cluster lists no client URLs" % peer_url)
                break  # as etcd: an empty but valid answer ends this round
            self.endpoints.replace(client_urls)
            new_peers = _urls(members, "peerURLs")
            if new_peers and new_peers != self.peer_urls:
                log.info("updated peer urls from %s to %s", self.peer_urls, new_peers)
                self.peer_urls = new_peers
            self.last_refresh = (time.time(), True, "%d endpoint(s)" % len(client_urls))
            log.debug("refreshed members from %s: %s", peer_url, client_urls)
            return True
        detail = "; ".join(errors) or "no peer URLs"
        kept = len(self.endpoints.all())
        log.warning("could not read the member list (%s); keeping %d known endpoint(s)",
                    detail, kept)
        self.last_refresh = (time.time(), False, detail)
        return False

    def next_delay(self):
        """Seconds until the next refresh: the interval, or 1 s while nothing is known."""
        if self.refresh_interval >= 30.0 and not self.endpoints.available():
            return FAST_RETRY
        return self.refresh_interval

    def run(self):
        """Refresh forever; the first refresh happens immediately."""
        while True:
            try:
                self.refresh()
            except Exception:  # keep refreshing whatever one round did
                log.exception("member refresh failed unexpectedly")
            gevent.sleep(max(self.next_delay(), 0.01))

    def start(self):
        self._greenlet = gevent.spawn(self.run)
        return self._greenlet

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self._session.close()
