"""geproxy.coalesce: identical one-shot watches share one upstream request.

A one-shot v2 watch (GET with ``wait=true``, without ``stream=true``) is
answered with a single event.  Many clients often wait on the same key; without
coalescing each holds its own upstream connection and its own watcher in the
member.  Here concurrent watches with the same key share one ``Group``:

* the key is the path, the query parameters sorted by name (the values of a
  repeated name keep their order, since etcd reads the first) and the
  ``Authorization`` header: watches from different ``waitIndex`` values or
  with different credentials never share;
* the first client creates the group, and a greenlet of the group's own (not
  that client's, so that client leaving does not end it) makes the upstream
  request through the app's usual endpoint choice and failover;
* when the member's status line and headers arrive, ``head`` is set; when its
  body is complete the group is first removed from the table (a client that
  arrives after that starts a new watch: it must never get an event from
  before it asked) and then ``body`` is set: every client of the group gets the
  same status, headers and body;
* each client leaves in a ``finally`` (also when the disconnect guard kills it
  with ClientGone); the last one to leave before the answer kills the group's
  greenlet, which closes the upstream response, so the member drops its watcher.

The group's greenlet runs ``answer``, a generator that yields
``(status, headers, source)`` once (``source``: the member's URL, or why the
proxy answers itself, for the metrics) and then the whole body, and closes the
upstream response when it is closed (see ``ProxyApp.watch_answer``).

What a client that joins a waiting group sees differs from a watch of its own
in one way: the answer is the member's answer to the group's first request.
Its ``X-Etcd-Index`` header is from when that request started, and a watch
without ``waitIndex`` can be answered with an event that the member applied
just before this client asked (the answer was already on its way).  Watches
with ``waitIndex``, the way etcd's clients watch, get exactly the event they
would have got alone.  The upstream request carries the first client's other
headers (User-Agent, X-Forwarded-For).
"""

import logging

import gevent
from gevent.event import AsyncResult

from geproxy.errors import error_answer
from geproxy.meter import FAILED_GETTING

log = logging.getLogger("geproxy.coalesce")

_BROKEN_STATUS, _BROKEN_HEADERS, _BROKEN_BODY = error_answer(
    "502 Bad Gateway", "httpproxy: shared watch failed")
_BROKEN = (_BROKEN_STATUS, _BROKEN_HEADERS, FAILED_GETTING)


def watch_key(target, authorization):
    """The coalescing key of a watch: (path, query pairs, Authorization)."""
    path, _, query = target.partition("?")
    pairs = [pair for pair in query.split("&") if pair]
    pairs.sort(key=lambda pair: pair.partition("=")[0])  # stable: repeated names keep order
    return path, tuple(pairs), authorization


class Group:
    """One upstream watch and the clients waiting on it."""

    __slots__ = ("key", "clients", "head", "body", "greenlet")

    def __init__(self, key):
        self.key = key
        self.clients = 0
        self.head = AsyncResult()  # (status, headers, source) once the member answered
        self.body = AsyncResult()  # the whole body, once it arrived
        self.greenlet = None


class Coalescer:
    """The groups of watches currently waiting, by key."""

    def __init__(self):
        self._groups = {}

    def __len__(self):
        return len(self._groups)

    def clients(self):
        """Clients waiting in the groups (for the metrics)."""
        return sum(group.clients for group in self._groups.values())

    def join(self, key, answer, *args):
        """The waiting group for ``key``; a new one runs ``answer(*args)`` upstream."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key)
            group.greenlet = gevent.spawn(self._run, group, answer(*args))
        group.clients += 1
        return group

    def leave(self, group):
        """One client is done (answered or gone); the last one cancels the watch."""
        group.clients -= 1
        if group.clients <= 0 and not group.body.ready():
            self._forget(group)
            group.greenlet.kill(block=False)

    def _forget(self, group):
        if self._groups.get(group.key) is group:
            del self._groups[group.key]

    def _run(self, group, answer):
        try:
            group.head.set(next(answer))
            body = next(answer)
            self._forget(group)
            group.body.set(body)
        except gevent.GreenletExit:  # the last client left; nobody waits
            pass
        except Exception:  # a bug: answer() handles the member's failures itself
            log.exception("shared watch on %s failed", group.key[0])
        finally:
            self._forget(group)
            answer.close()
            if not group.head.ready():  # never leave a client waiting forever
                group.head.set(_BROKEN)
                group.body.set(_BROKEN_BODY)
            elif not group.body.ready():
                group.body.set(b"")
