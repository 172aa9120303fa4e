"""
Null-client mode for the daemon's own listeners: a queue that is qmail-qmqpc.

With C{twistd qmail --nullclient}, SMTP/QMTP/QMQP listeners hand each accepted message to
the first answering server of C{control/qmqpservers} instead of the local queue, as a
mini-qmail whose qmail-queue is qmail-qmqpc (spec/qmqp-qmtp.md §4.3).  L{QmqpQueue} has the
queue's C{begin()}/writer API, so protocols need not know; failures carry the texts of
qmail-qmqpc's exit codes (qmail.c's wording, L{qmailtx.results.qqExitFailure}).

QMQP needs the whole length before the first byte, so a message is spooled (in memory up to
L{MEMORY_LIMIT}, then an unnamed temporary file) and sent at commit.  Reads
C{control/qmqpservers}; writes only those unnamed temporary files.  Must not import the queue,
delivery, or any server protocol.
"""

import itertools
import tempfile

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import TimeoutMixin

from qmailtx.nodelay import setNoDelay
from qmailtx import log, netstring, qmqpc
from qmailtx.control import ControlError
from qmailtx.results import qqExitFailure

MEMORY_LIMIT = 256 * 1024
"""Message bytes spooled in memory; a longer message goes to a temporary file."""

_LETTERS = {ord("K"): qmqpc.EXIT_OK, ord("Z"): qmqpc.EXIT_TEMP, ord("D"): qmqpc.EXIT_PERM}
_QP_LIMIT = 64
"""Bytes of a C{K} reply searched for the server's qp."""


def serverQp(reply):
    """The qp number in a C{Kok <time> qp <qp>} reply, or C{None}."""
    _, sep, rest = reply.partition(b" qp ")
    digits = rest[:len(rest) - len(rest.lstrip(b"0123456789"))]
    return int(digits) if sep and digits else None


class QMQPClient(Protocol, TimeoutMixin):
    """
    One QMQP request: the outer length, the spooled message streamed, sender and
    recipients, then the first C{K}/C{Z}/C{D} byte of the reply decides (as qmail-qmqpc
    reads it).  C{done} fires with C{(exitCode, reply)}; a broken connection or a silence
    of C{timeout} seconds is 74.
    """

    def __init__(self, spool, length, envelope, timeout, reactor):
        self.spool = spool
        self.length = length
        self.envelope = envelope
        self.timeout = timeout
        self.callLater = reactor.callLater
        self.done = defer.Deferred()
        self._reply = None
        self._code = None

    def connectionMade(self):
        setNoDelay(self.transport)
        self.setTimeout(self.timeout)
        head = b"%d:" % self.length
        total = len(head) + self.length + 1 + len(self.envelope)
        self.transport.write(b"%d:%s" % (total, head))
        self.spool.seek(0)
        sending = FileSender().beginFileTransfer(self.spool, self.transport, self._sent)
        sending.addCallbacks(self._cbSent, lambda f: self.transport.abortConnection())

    def _sent(self, data):
        self.resetTimeout()
        return data

    def _cbSent(self, ignored):
        self.transport.write(b"," + self.envelope + b",")

    def dataReceived(self, data):
        self.resetTimeout()
        if self._code is None:
            for i, byte in enumerate(data):
                if byte in _LETTERS:
                    self._code = _LETTERS[byte]
                    self._reply = bytearray(data[i:])
                    break
        elif len(self._reply) < _QP_LIMIT:
            self._reply += data
        if self._code is not None and (self._code != qmqpc.EXIT_OK or b"," in self._reply
                                       or len(self._reply) >= _QP_LIMIT):
            self.transport.loseConnection()

    def timeoutConnection(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        code = qmqpc.EXIT_CONNECTION if self._code is None else self._code
        self.done.callback((code, bytes(self._reply or b"").split(b",")[0]))


class QmqpWriter:
    """
    One message spooled for QMQP.

    @ivar qp: a local number until the server accepts, then the server's own qp (so an
        SMTP client's C{250 ok … qp N} names the message where it is really queued).
    """

    def __init__(self, queue, qp):
        self._queue = queue
        self.qp = qp
        self._spool = tempfile.SpooledTemporaryFile(MEMORY_LIMIT, dir=queue.spoolDir)
        self._length = 0
        self._writeError = None
        self._state = "open"

    def write(self, data):
        """Append message bytes; a spool write error fails the commit (qq exit 53)."""
        if self._state != "open" or self._writeError is not None:
            return
        try:
            self._spool.write(data)
        except OSError:
            self._writeError = 53
            return
        self._length += len(data)

    def registerProducer(self, producer, streaming):
        """Nothing to pause for until commit: the spool never pushes back."""

    def unregisterProducer(self):
        pass

    def commit(self, sender, recipients):
        """
        Send the message to the first QMQP server that accepts a connection.  Fires with
        C{None} on C{K}; fails with qmail-qmqpc's exit code as a L{TempFailure} or
        L{PermFailure}.
        """
        if self._state != "open":
            return defer.fail(qqExitFailure(81))
        self._state = "committing"
        if self._writeError is not None:
            self._close()
            return defer.fail(qqExitFailure(self._writeError))
        d = self._queue.send(self._spool, self._length, sender, recipients)
        d.addBoth(self._cbSent)
        return d

    def _cbSent(self, result):
        self._close()
        code, reply = result
        if code != qmqpc.EXIT_OK:
            raise qqExitFailure(code)
        qp = serverQp(reply)
        if qp is not None:
            self.qp = qp

    def abort(self):
        """Drop the message; nothing was sent."""
        if self._state == "open":
            self._close()

    def _close(self):
        self._state = "closed"
        self._spool.close()


class QmqpQueue:
    """
    The listeners' queue in null-client mode.  C{control/qmqpservers} is read at every
    commit, as each qmail-qmqpc run reads it; missing, unreadable or with no address it
    is exit 55.

    @param port: the servers' QMQP port (628; other values for tests and odd setups).
    @param connect: C{(host, port, timeout) -> endpoint}, for tests.
    """

    def __init__(self, controls, reactor, port=qmqpc.PORT, spoolDir=None,
                 connectTimeout=qmqpc.CONNECT_TIMEOUT, timeout=qmqpc.TIMEOUT, connect=None):
        self.controls = controls
        self.reactor = reactor
        self.port = port
        self.spoolDir = spoolDir
        self.connectTimeout = connectTimeout
        self.timeout = timeout
        self._connect = connect or (
            lambda host, port, timeout: TCP4ClientEndpoint(reactor, host, port, timeout))
        self._qps = itertools.count(1)

    def begin(self, how):
        """A writer; no Received line of our own (qmail-qmqpc adds none)."""
        return QmqpWriter(self, next(self._qps))

    def servers(self):
        try:
            servers = qmqpc.nullClientServers(self.controls)
        except ControlError:
            return []
        return servers or []

    @defer.inlineCallbacks
    def send(self, spool, length, sender, recipients):
        """
        qmail-qmqpc's loop over the servers: fires with C{(exitCode, reply)}.  A refused
        or timed-out connection moves on to the next server (remembering 73 or 72); once
        connected the answer (or 74) is final.
        """
        envelope = netstring.encode(sender) + netstring.encodeList(recipients)
        lastError = qmqpc.EXIT_CONFIG
        for host in self.servers():
            client = QMQPClient(spool, length, envelope, self.timeout, self.reactor)
            endpoint = self._connect(host, self.port, self.connectTimeout)
            try:
                yield endpoint.connect(Factory.forProtocol(lambda: client))
            except error.TimeoutError:
                lastError = qmqpc.EXIT_TIMEOUT
                continue
            except Exception:
                lastError = qmqpc.EXIT_REFUSED
                continue
            code, reply = yield client.done
            if code != qmqpc.EXIT_OK:
                log.warning(f"nullclient: {host} answered exit {code}: "
                            f"{reply.decode('utf-8', 'replace')}")
            return code, reply
        return lastError, b""
