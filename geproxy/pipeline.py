"""geproxy.pipeline: reads of keys share a few connections per member, pipelined.

Why: with one upstream connection per request in flight, a member serves as
many connections as the proxy has requests in flight to it, and every
request costs a system call on each side and often a wake-up of the member.
Measured here in one run (bench/README "Pipelined reads"), GETs from 50
client connections spread over three members cost the members 117 µs of CPU
per request that way and the proxy 104 µs; on two pipelined connections per
member, the requests of one event-loop turn together in one send (about
five), 74 and 73 µs, and the proxy did 1.12x the Go proxy's req/s instead of
0.79x.  The Go proxy gets a similar effect toward TLS members from HTTP/2;
this is HTTP/1.1 pipelining (RFC 9112 9.3.2).

What may be pipelined (``suits``): a GET of ``/v2/keys`` without a body that
is neither a watch nor a quorum read, so that no answer waits on raft or on a
change and holds up the ones behind it.  Answers come back in the order the
requests were sent; each request's greenlet reads its own answer once the
one before it is done (``wait_turn``/``release``).

A request whose pipe breaks before its answer began (the connection failed,
the member closed it, an answer ahead of it failed, or came without a length
and is streamed to its client) gets ``PipeBroken`` and is sent again on a
connection of its own: only GETs are pipelined, and a GET may be repeated.
"""

import time
from collections import deque

import gevent
from gevent.hub import get_hub, Waiter

from geproxy.errors import PipeBroken
from geproxy.pool import CHECK_AFTER

DEPTH = 8  # requests in flight on one pipe before another one is opened (up to the limit)
STREAMED_KEPT = 1024  # targets remembered per member for answering without a length


def suits(method, target, body):
    """Whether a request may share a pipe: a plain read of keys (see the module docstring)."""
    if method != "GET" or body or not target.startswith("/v2/keys"):
        return False
    query = target.partition("?")[2]
    return "wait=" not in query and "quorum=" not in query


class Pipe:
    """One keep-alive connection to a member carrying requests in line.

    ``order`` holds a Waiter per request sent and not yet answered, in the
    order sent; the first one's answer is the next on the wire, and while its
    greenlet reads it ``reading`` is set.  Requests that arrive while a batch
    is being written (or the connection made) wait in ``outbox`` and go with
    the next send.  A dead pipe takes no more requests; its connection closes
    as soon as nobody reads from it.
    """

    __slots__ = ("pool", "wire", "order", "outbox", "buf", "sending", "reading", "dead",
                 "idle_since")

    def __init__(self, pool):
        self.pool = pool
        self.wire = None
        self.order = deque()
        self.outbox = []
        self.buf = b""  # what the last answer's reader read past its end
        self.sending = False
        self.reading = False
        self.dead = False
        self.idle_since = 0.0

    @property
    def base_url(self):
        return self.pool.base_url

    def submit(self, data, timeout):
        """Put a request in line and see it written: (its Waiter, whether it is first).

        The first request of an event-loop turn yields once before it writes,
        so that the requests of the same turn go in the same send.
        ConnectError if no connection could be made (nothing was sent).  If
        the send fails, the pipe takes no more requests, but the ones in line
        keep their places: the member may have answered some of them before it
        closed, and their readers find out in turn (the first to meet the end
        sends the rest elsewhere).
        """
        waiter = Waiter()
        first = not self.order
        self.order.append(waiter)
        self.outbox.append(data)
        if self.sending:
            return waiter, first
        self.sending = True
        try:
            if self.wire is None:  # a new pipe: on an idle pooled connection, or a new one
                self.wire = self.pool.get(check=False)[0]
            else:
                gevent.sleep(0)
            while self.outbox and self.wire is not None:
                batch, self.outbox = b"".join(self.outbox), []
                self.wire.send_all(batch, timeout)
        except OSError:
            self.dead = True
            self.outbox = []
        except BaseException:  # ConnectError, or this greenlet was killed
            self.kill(waiter)
            raise
        finally:
            self.sending = False
        return waiter, first

    def wait_turn(self, waiter, first):
        """Block until this request's answer is next; the bytes already read of it."""
        if not first:
            try:
                waiter.get()  # switched to by release() of the answer before, or PipeBroken
            except PipeBroken:
                raise
            except BaseException:  # this greenlet was killed: nobody would read its answer
                self.kill(waiter)
                raise
        if not self.order or self.order[0] is not waiter:  # the pipe ended meanwhile
            raise PipeBroken()
        self.reading = True
        buf, self.buf = self.buf, b""
        return buf

    def release(self, wire, reusable, leftover):
        """The reader is done with its answer: the next one's turn, or the end of the pipe."""
        self.reading = False
        if not reusable:
            self.kill()
            return
        order = self.order
        order.popleft()
        self.buf = leftover
        if order:
            get_hub().loop.run_callback(order[0].switch, None)
        elif self.dead:
            self.kill()
        else:
            self.idle_since = time.monotonic()

    def kill(self, waiter=None):
        """No more requests on this pipe: every one in line but ``waiter`` (which fails on
        its own) and the current reader is sent elsewhere; the connection closes now, or
        when the current reader is done with it."""
        self.dead = True
        order, self.order = self.order, deque()
        reader = order[0] if self.reading and order else None
        loop = get_hub().loop
        for other in order:
            if other is not waiter and other is not reader:
                loop.run_callback(other.throw, PipeBroken)
        if reader is not None:
            self.order.append(reader)
        elif self.wire is not None:
            wire, self.wire = self.wire, None
            self.pool.discard(wire)

    def hand_over(self):
        """The current answer comes without a length (it is streamed to its client) or
        closes the connection: nothing behind it can be read before it ends.  The pipe
        takes no more requests; the ones behind it go elsewhere.  The owner who should
        get the connection back when the answer is done: the member's pool when nothing
        was sent behind it, else this pipe (which then closes it)."""
        if len(self.order) == 1 and not self.outbox:
            self.dead = True
            self.order.clear()
            self.reading = False
            self.wire = None  # the answer's now, and the pool's after it
            return self.pool
        self.kill()
        return self

    def stale(self):
        """An idle pipe the member may have closed meanwhile (peeked, as pooled connections)."""
        return (not self.order and self.wire is not None
                and time.monotonic() - self.idle_since > CHECK_AFTER
                and self.wire.ready() is not None)


class Pipes:
    """The pipes to one member: at most ``limit``, each up to DEPTH deep before another opens.

    ``streamed`` remembers the targets (the latest STREAMED_KEPT) whose answer came
    without a length: etcd sends any answer over 2 KiB chunked, and each such answer
    ends its pipe and sends the reads behind it again, so reads of those targets (a
    big directory listed again and again) keep to connections of their own.
    """

    __slots__ = ("pool", "limit", "pipes", "streamed")

    def __init__(self, pool, limit):
        self.pool = pool
        self.limit = limit
        self.pipes = []
        self.streamed = {}

    def takes(self, target):
        return target not in self.streamed

    def streams(self, target):
        """``target``'s answer came without a length: not pipelined from now on."""
        streamed = self.streamed
        streamed[target] = True
        if len(streamed) > STREAMED_KEPT:
            del streamed[next(iter(streamed))]

    def pick(self):
        """The pipe with the fewest requests in line, or a new one."""
        best = None
        live = 0
        for pipe in self.pipes:
            if pipe.dead:
                continue
            if pipe.stale():
                pipe.kill()
                continue
            live += 1
            if best is None or len(pipe.order) < len(best.order):
                best = pipe
        if best is None or (len(best.order) >= DEPTH and live < self.limit):
            self.pipes = [p for p in self.pipes if not p.dead]
            best = Pipe(self.pool)
            self.pipes.append(best)
        return best

    def close(self):
        for pipe in self.pipes:
            pipe.kill()
        self.pipes = []
