"""geproxy.shutdown: the graceful stop, one sequence for a single process and each worker.

On SIGTERM (under ``--workers`` the arbiter passes it on to every worker):

1. the listening sockets close at once: new connections are refused;
2. idle keep-alive connections close at once; a connection with a request in
   flight closes after its answer;
3. watches waiting for an event end cleanly: their answer head is already out,
   so the body ends there (the last chunk of a chunked answer).  The client sees
   a complete answer without an event, which etcd's clients take as "watch
   again" (the Go client's ErrEmptyBody), from the same index, through another
   proxy if this one is gone; a stream watch ends the same way, and every
   client of a coalesced group too;
4. requests in flight finish, for at most ``--proxy-shutdown-timeout``; what is
   still open then is cut;
5. the process exits 0.

A second SIGTERM, or SIGINT at any time, cuts what is open and exits at once.
"""

import gevent

from geproxy.errors import WatchEnded


class Watches:
    """The greenlets waiting on a watch whose answer head is out, for ``end()``."""

    def __init__(self):
        self._waiting = set()
        self.ended = False

    def enter(self):
        """The current greenlet waits on a watch; WatchEnded at once if the proxy stops."""
        if self.ended:
            raise WatchEnded()
        greenlet = gevent.getcurrent()
        self._waiting.add(greenlet)
        return greenlet

    def leave(self, greenlet):
        self._waiting.discard(greenlet)

    def end(self):
        """End every waiting watch (WatchEnded in its greenlet), and any that starts later."""
        self.ended = True
        for greenlet in list(self._waiting):
            greenlet.kill(WatchEnded, block=False)


def _join(pools):
    for pool in pools:
        pool.join()


def graceful(servers, watches, timeout, hurry=None):
    """Stop ``servers`` (server.PyWSGIServer) gracefully; the number of connections cut.

    Steps 1 to 4 above: ``watches`` (shutdown.Watches) end, requests in flight
    get ``timeout`` seconds, or less if ``hurry`` (an Event) is set meanwhile.
    """
    for server in servers:
        server.drain()
    watches.end()
    pools = list({id(s.pool): s.pool for s in servers if s.pool is not None}.values())
    waiter = gevent.spawn(_join, pools)
    gevent.wait([waiter] if hurry is None else [waiter, hurry], timeout=timeout, count=1)
    waiter.kill(block=False)
    cut = sum(len(pool) for pool in pools)
    for server in servers:
        server.stop(timeout=0)  # kills what is left
    return cut
