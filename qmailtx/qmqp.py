"""
The QMQP server: qmail-qmqpd's behaviour (spec/qmqp-qmtp.md §4.2) as a Twisted protocol,
and what every package server shares (L{PackageServer}: one package at a time into a queue
writer, the session limit, backpressure, QMAILQUEUE, the Received line).

QMQP relays to anyone: restrict it with rules (spec/rules.md §7).  Reads nothing from
C{control/}; writes nothing itself (messages go to a queue writer).  Must not import
delivery, the queue's directories, or C{smtp}.
"""

import os

from twisted.internet.protocol import Factory, Protocol

from qmailtx import address, netstring
from qmailtx.results import PermFailure, TempFailure
from qmailtx.writethrough import writeNow

SESSION_TIMEOUT = 3600
"""qmail-qmtpd and qmail-qmqpd: alarm(3600) for the whole session."""

CLOSE_GRACE = 60
"""After the session limit, how long a peer that reads nothing may keep the socket."""

ADDRESS_LIMIT = 1000
"""qmail's buf[1000]: an address this long (or longer) is refused, never buffered."""

MAX_RECIPIENTS = 100000
"""Recipients (hence responses) held per package; more is a resource error (⚠ qmailtx)."""

MAX_ENVELOPE = 10 * 1024 * 1024
"""Bytes of accepted recipients held per package; more is a resource error (⚠ qmailtx)."""

UNKNOWN_QUEUE_FAILURE = TempFailure(b"qq temporary problem (#4.3.0)")
BAD_ADDRESS = b"Dsorry, I can't accept addresses like that (#5.1.3)"
NO_RECIPIENTS = b"Dsorry, no recipients (#5.1.3)"

MESSAGE_START = "message-start"
MESSAGE_DATA = "message-data"
SENDER = "sender"
RECIPIENT = "recipient"
PACKAGE_END = "package-end"


class ResourceError(netstring.NetstringLengthError):
    """A package needs more memory than its limits allow: close, as qmail exits 111."""


def receivedLine(proto, env, now):
    """
    The server's own Received line from the tcpserver environment: qmail's line with no
    HELO part, C{Received: from RH (RI@IP)\n  by LOCAL with PROTO; DATE\n}.
    """
    def get(name):
        value = env.get(name)
        return None if value is None else os.fsencode(value)

    local = get("TCPLOCALHOST") or get("TCPLOCALIP") or b"unknown"
    return address.receivedLine(
        get("TCPREMOTEHOST") or b"unknown", None, get("TCPREMOTEINFO"),
        get("TCPREMOTEIP") or b"unknown", local, proto, int(now))


class PackageServer(Protocol):
    """
    What QMTP and QMQP servers share: one package at a time into a queue writer, reading
    paused while a commit is pending (so pipelined input is held to one read) or while the
    peer does not read our replies; a whole-session limit; no partial message ever
    committed.

    @ivar env: the tcpserver environment (set by the rules layer before connection).
    """

    env = None
    proto = b""

    def __init__(self):
        self._pauses = set()
        self._held = b""
        self._writer = None
        self._closing = False
        self._timer = self._graceCall = None

    def connectionMade(self):
        if self.env is None:
            self.env = {}
        clock = self.factory.reactor
        self._timer = clock.callLater(self.factory.sessionTimeout, self._sessionExpired)
        self.transport.registerProducer(self, True)
        self.sessionStarted()

    def sessionStarted(self):
        """Called once the connection is set up; may close it."""

    def connectionLost(self, reason):
        self._closing = True
        for call in (self._timer, self._graceCall):
            if call is not None and call.active():
                call.cancel()
        self._abortWriter()

    def _sessionExpired(self):
        self.closeSession()
        self._graceCall = self.factory.reactor.callLater(
            CLOSE_GRACE, self.transport.abortConnection)

    def closeSession(self):
        """Drop any unfinished message, send what is already written, close."""
        if self._closing:
            return
        self._closing = True
        self._held = b""
        self._abortWriter()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _abortWriter(self):
        writer, self._writer = self._writer, None
        self._resume("queue")
        if writer is not None:
            writer.abort()

    def pauseProducing(self):
        self._pause("output")

    def resumeProducing(self):
        self._resume("output")

    def stopProducing(self):
        pass

    def _pause(self, reason):
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def _resume(self, reason):
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closing:
            self.transport.resumeProducing()

    def dataReceived(self, data):
        if self._closing:
            return
        if "commit" in self._pauses:
            self._held += data
            return
        try:
            self.handleData(data)
        except netstring.NetstringError:
            self.closeSession()

    def handleData(self, data):
        """Parse C{data}; raise L{netstring.NetstringError} to close the session."""
        raise NotImplementedError()

    def beginMessage(self):
        """
        A queue writer with this server's Received line written, or the failure
        (L{TempFailure}/L{PermFailure}) that stopped it.
        """
        try:
            writer = self.factory.queueFor(self.env).begin(b"from network")
        except (TempFailure, PermFailure) as e:
            return e
        except Exception:
            return UNKNOWN_QUEUE_FAILURE
        register = getattr(writer, "registerProducer", None)
        if register is not None:
            register(_QueuePause(self), True)
        writer.write(receivedLine(self.proto, self.env, self.factory.reactor.seconds()))
        self._writer = writer
        return None

    def commitMessage(self, sender, recipients, respond):
        """
        Commit the current writer and call C{respond(report)} with C{Kok …} or the
        queue's D/Z text.  Input is held until then, so replies keep their order.
        """
        writer, self._writer = self._writer, None
        self._resume("queue")
        d = writer.commit(sender, recipients)
        d.addCallbacks(self._cbCommitted, _queueReport, callbackArgs=(writer,))
        d.addCallback(respond)
        if not d.called:
            self._pause("commit")
            d.addBoth(self._resumeAfterCommit)

    def _cbCommitted(self, msgid, writer):
        return b"Kok %d qp %d" % (int(self.factory.reactor.seconds()), writer.qp)

    def _resumeAfterCommit(self, ignored):
        self._resume("commit")
        held, self._held = self._held, b""
        if held:
            self.dataReceived(held)


class _QueuePause:
    """The producer a queue writer pauses when its pipe is backlogged."""

    def __init__(self, server):
        self._server = server

    def pauseProducing(self):
        self._server._pause("queue")

    def resumeProducing(self):
        self._server._resume("queue")

    def stopProducing(self):
        self._server._resume("queue")


def _queueReport(failure):
    e = failure.value
    if not isinstance(e, (TempFailure, PermFailure)):
        e = UNKNOWN_QUEUE_FAILURE
    return e.letter + e.text


class PackageServerFactory(Factory):
    """
    Builds package servers.  Wrap it in L{qmailtx.tcpserver.RulesFactory} to get the
    tcpserver environment and rules.

    @param queue: what L{queueFor} returns when the environment names no QMAILQUEUE
        (a L{qmailtx.queue.Queue}, or anything with its C{begin()}).
    @param controls: the L{qmailtx.control.ControlDir} (QMTP reads it per connection).
    @param programQueue: C{(program, env) -> queue} for a connection whose environment
        sets C{QMAILQUEUE} (netqmail); without it QMAILQUEUE is ignored.
    """

    sessionTimeout = SESSION_TIMEOUT

    def __init__(self, queue, controls=None, reactor=None, programQueue=None):
        if reactor is None:
            from twisted.internet import reactor
        self.queue = queue
        self.controls = controls
        self.reactor = reactor
        self.programQueue = programQueue

    def queueFor(self, env):
        """The queue for a connection: C{QMAILQUEUE}'s program if set, else ours."""
        program = env.get("QMAILQUEUE")
        if program and self.programQueue is not None:
            return self.programQueue(program, env)
        return self.queue


class PackageParser:
    """
    A QMQP package from bytes (§4.1), pure.  L{feed} returns C{(events, rest)}; C{rest}
    is input after the package, which QMQP ignores.

    Events: C{(MESSAGE_START, length)}, C{(MESSAGE_DATA, chunk)} (verbatim),
    C{(SENDER, address or None)}, C{(RECIPIENT, address or None)} (C{None}: 1000 bytes
    or longer, or containing NUL), C{(PACKAGE_END, None)}.  Every netstring must lie
    inside the outer one.
    """

    def __init__(self):
        self._outer = netstring.NetstringDecoder()
        self._outer.stopAfterEnd = True
        self._inner = None
        self._item = 0
        self._buf = None
        self.done = False

    def feed(self, data):
        events = []
        if self.done:
            return events, data
        for kind, value in self._outer.feed(data):
            if kind == netstring.LENGTH:
                self._inner = netstring.NetstringDecoder(bound=value)
            elif kind == netstring.DATA:
                self._innerData(value, events)
            else:
                if not self._inner.atBoundary or self._item == 0:
                    raise netstring.NetstringError("truncated QMQP package")
                if self._item == 1:
                    raise netstring.NetstringError("QMQP package without sender")
                events.append((PACKAGE_END, None))
                self.done = True
        return events, data[self._outer.consumed:]

    def _innerData(self, data, events):
        item = self._item
        for kind, value in self._inner.feed(data):
            if kind == netstring.DATA:
                if item == 0:
                    events.append((MESSAGE_DATA, value))
                elif self._buf is not None:
                    self._buf += value
            elif kind == netstring.LENGTH:
                if item == 0:
                    events.append((MESSAGE_START, value))
                else:
                    if item > MAX_RECIPIENTS:
                        raise ResourceError("too many recipients")
                    self._buf = bytearray() if value < ADDRESS_LIMIT else None
            else:
                if item:
                    buf = self._buf
                    address = None if buf is None or 0 in buf else bytes(buf)
                    events.append((SENDER if item == 1 else RECIPIENT, address))
                self._item = item = item + 1


class QMQPServer(PackageServer):
    """
    One QMQP connection: one package, one reply, then close (spec/qmqp-qmtp.md §4.2).
    Relays to any recipient: no rcpthosts, no databytes.
    """

    proto = b"QMQP"

    def sessionStarted(self):
        self._parser = PackageParser()
        self._ok = True
        self._failure = None
        self._sender = None
        self._recipients = []
        self._envelopeBytes = 0

    def handleData(self, data):
        events, rest = self._parser.feed(data)
        for kind, value in events:
            if kind == MESSAGE_DATA:
                if self._writer is not None:
                    self._writer.write(value)
            elif kind == RECIPIENT:
                self._address(value)
                if value is not None:
                    self._recipients.append(value)
            elif kind == SENDER:
                self._address(value)
                self._sender = value
            elif kind == MESSAGE_START:
                self._failure = self.beginMessage()
            else:
                self._packageEnd()

    def _address(self, address):
        if address is None:
            self._ok = False
            self._abortWriter()
        else:
            self._envelopeBytes += len(address) + 2
            if self._envelopeBytes > MAX_ENVELOPE:
                raise ResourceError("envelope too large")

    def _packageEnd(self):
        self._pause("done")
        if not self._ok:
            report = BAD_ADDRESS
        elif self._failure is not None:
            report = self._failure.letter + self._failure.text
        elif not self._recipients:
            report = NO_RECIPIENTS
        else:
            self.commitMessage(self._sender, self._recipients, self._reply)
            return
        self._abortWriter()
        self._reply(report)

    def _reply(self, report):
        if not self._closing:
            writeNow(self.transport, netstring.encode(report))
            self.closeSession()


class QMQPFactory(PackageServerFactory):
    """Builds L{QMQPServer}s; see L{PackageServerFactory}.  C{controls} is not read."""

    protocol = QMQPServer
