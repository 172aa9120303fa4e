"""
The listeners' commits in flight, and their messages still arriving: what a stopping daemon
or receiver waits for before the reactor drops its connections.

A commit in flight may already be queued (its C{todo/} link made, a QMAILQUEUE program or a
null client's QMQP server holding the message): dropped before its answer, the client sends
the message again.  A message still arriving is waited for briefly (L{OPEN_MESSAGE_WAIT}) so
that its client hears C{qq shutting down} instead of a dropped connection.  L{Commits} sees
every message the listeners and the queue socket begin and commit, whichever queue takes it,
refuses new commits once closed, and fires when the last one has answered, after the
listeners have said goodbye to the sessions still open (L{Commits.farewells}: SMTP's 421).
Delivery's own commits (bounces) do not pass here: qmail-send finishes them itself.

Must not import protocol, delivery or queue-file modules.
"""

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from qmailtx import log
from qmailtx.results import QQ_SHUTTING_DOWN, fromReport

DRAIN_LIMIT = 4.0
"""Seconds a receiver's L{Commits.close} waits: a commit takes milliseconds, so only a disk
or a queue program that hangs reaches it (slow clients are given up on sooner,
L{OPEN_MESSAGE_WAIT}); below the receivers' stop grace (L{qmailtx.receiver.STOP_GRACE}),
after which the daemon kills them."""
OPEN_MESSAGE_WAIT = 3.5
"""Seconds a stop waits for messages still arriving (DATA begun, end not yet seen): their
clients get qq shutting down at their end instead of a dropped connection; a client slower
than this is dropped, and sends the message again later."""
DAEMON_DRAIN_LIMIT = 60.0
"""Seconds the daemon waits for its own listeners' commits.  A hung disk holds its stop
anyway (the flusher answers what it was asked); this bounds a QMAILQUEUE program or a null
client's QMQP server that never answers."""

_log = Logger()


class Commits:
    """The commits in flight, and messages still arriving, of the queues handed out by L{watch}."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.closed = False
        self._inFlight = 0
        self._open = set()
        self._openTimer = None
        self._drainWaiters = []
        self.farewells = []
        """Callables run once the wait is over, before L{close} fires: each says goodbye
        to the sessions its listener still has open (SMTP's 421)."""

    def watch(self, queue):
        """C{queue} as the listeners see it: its writers' commits pass through here."""
        return _WatchedQueue(queue, self)

    def close(self, limit=DRAIN_LIMIT):
        """
        Take no more commits; the Deferred fires once the last commit in flight has
        answered, and every message still arriving has ended (or L{OPEN_MESSAGE_WAIT} is
        up), and the reactor has made one pass over its sockets since (so an answer a
        transport buffered leaves first), or after C{limit} seconds (C{None}: no limit)
        with a warning.  Then the L{farewells} are said: a goodbye is written straight to
        its socket (L{qmailtx.writethrough}) unless the client has left unread replies
        waiting, and is then lost with the connection, as RFC 5321 §3.8 allows.
        """
        return self._drain(limit).addCallback(self._sayFarewells)

    def _sayFarewells(self, _):
        farewells, self.farewells = self.farewells, []
        for farewell in farewells:
            try:
                farewell()
            except Exception:
                _log.failure("saying goodbye to open sessions")

    def _drain(self, limit):
        self.refuse()
        if not self._inFlight and not self._open:
            return succeed(None)
        d = Deferred()
        timer = None if limit is None else self.reactor.callLater(limit, self._gaveUp, d)
        self._drainWaiters.append((d, timer))
        if self._open and self._openTimer is None:
            wait = OPEN_MESSAGE_WAIT if limit is None else min(OPEN_MESSAGE_WAIT, limit)
            self._openTimer = self.reactor.callLater(wait, self._forgetOpen)
        return d

    def refuse(self):
        """Take no more commits (those in flight go on)."""
        self.closed = True

    def track(self, d):
        """
        Count C{d}, other work that owes a client its answer (POP3's UPDATE), as a commit
        in flight; it is never refused.  Returns C{d}.  Whether the answer is written by a
        callback before or after this one (POP3: before; a commit: after), the reactor's
        pass over its sockets comes before L{close} fires.
        """
        self._inFlight += 1
        d.addBoth(self._ended)
        return d

    def _opened(self, writer):
        self._open.add(writer)

    def _settled(self, writer):
        """C{writer} committed or aborted: no longer a message being received."""
        if writer in self._open:
            self._open.discard(writer)
            self._checkDrained()

    def _forgetOpen(self):
        """Messages still arriving when L{OPEN_MESSAGE_WAIT} is up are not waited for."""
        self._openTimer = None
        if self._open:
            log.warning(f"stopping while {len(self._open)} messages are still arriving; "
                        "their clients will send them again")
            self._open.clear()
            self._checkDrained()

    def _commit(self, writer, sender, recipients):
        if self.closed:
            writer.abort()
            return fail(fromReport(QQ_SHUTTING_DOWN))
        return self.track(maybeDeferred(writer.commit, sender, recipients))

    def _ended(self, result):
        self._inFlight -= 1
        self._checkDrained()
        return result

    def _checkDrained(self):
        if not self._inFlight and not self._open and self._drainWaiters:
            # The answer is written by a callback after this one, and a buffered write
            # leaves on the reactor's next pass over its sockets, which runs after the
            # timed calls of its turn: fire from the turn after that.
            self.reactor.callLater(0, self.reactor.callLater, 0, self._drained)

    def _drained(self):
        if self._inFlight or self._open:
            return
        if self._openTimer is not None and self._openTimer.active():
            self._openTimer.cancel()
        self._openTimer = None
        waiters, self._drainWaiters = self._drainWaiters, []
        for d, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(None)

    def _gaveUp(self, d):
        self._drainWaiters = [(w, t) for w, t in self._drainWaiters if w is not d]
        if self._inFlight:
            log.warning("stopping with messages still being queued; their clients may send "
                        "them again")
        d.callback(None)


class _WatchedQueue:
    """A queue whose C{begin()} hands out watched writers; anything else is the queue's."""

    def __init__(self, queue, commits):
        self.watchedQueue = queue
        self._commits = commits

    def begin(self, *args, **kwargs):
        return _WatchedWriter(self.watchedQueue.begin(*args, **kwargs), self._commits)

    def __getattr__(self, name):
        return getattr(self.watchedQueue, name)


class _WatchedWriter:
    """A writer counted as a message being received until its C{commit()} (then counted as a
    commit in flight) or C{abort()} (L{Commits}); anything else is the writer's."""

    def __init__(self, writer, commits):
        self._writer = writer
        self._commits = commits
        if not commits.closed:
            commits._opened(self)

    def commit(self, sender, recipients):
        self._commits._settled(self)
        return self._commits._commit(self._writer, sender, recipients)

    def abort(self):
        self._commits._settled(self)
        return self._writer.abort()

    def __getattr__(self, name):
        return getattr(self._writer, name)
