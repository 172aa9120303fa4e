"""
The queue socket: qmail-queue for local users who may not write C{queue/} themselves.

Started as root, the daemon's C{queue/} is root's (mode 750), so a forward made by a delivery
running as the mailbox owner, or a user's C{qmailtx sendmail}, cannot create its files there.
qmail made qmail-queue setuid qmailq; qmailtx instead listens on C{ROOT/public/qmail-queue}
(L{socketPath}: C{public/} 0755 holds what every local user may reach, as in Postfix; the
socket is 0666, made at start and removed at stop; C{run/} stays the daemon's own).
C{qmailtx queue} hands its fd 0 and fd 1 here when it cannot write the queue (wire format in
L{qmailtx.queueframe}).  The client's uid comes from the kernel (C{SO_PEERCRED}), never from
its words, and goes into the Received line and the C{todo/} C{u} record as qmail-queue would
write them for that uid.  The answer, qmail-queue's exit code, is sent only once the commit is
durable.

Writes C{ROOT/public/} and, through L{qmailtx.queue.Queue}, the queue; must not import
delivery or the network listeners.
"""

import os
import socket
import stat
import struct

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from qmailtx import log
from qmailtx.envelope import EnvelopeError, EnvelopeReader
from qmailtx.queueframe import (FramingError, MessageDecoder, encodeAnswer,
                                receivedHow)
from qmailtx.results import PermFailure, TempFailure, qqExitCode

SOCKET_DIR = "public"
SOCKET_NAME = "qmail-queue"
STALL_TIMEOUT = 1200
"""Seconds a client may send nothing before it is answered 52 (qq timeout) and dropped;
qmail-smtpd's default C{timeoutsmtpd}, since a client may be a user typing into sendmail."""
ENVELOPE_LIMIT = 4 * 1024 * 1024
"""Envelope bytes one client may send (about 100,000 recipients); qmail-queue would
run out of memory somewhere, so more is answered 51 (qq out of memory)."""
CLIENT_LIMIT = 40
"""Clients served at once; further ones wait in the listen backlog (tcpserver's -c)."""
UID_LIMIT = CLIENT_LIMIT // 2
"""Clients of one uid served at once: a user stalling connections (each may sit for
L{STALL_TIMEOUT}) cannot take every place from the others' forwards and sendmails.  Root and
the daemon's own uid (virtual mode's deliveries) are not limited.  A client over it is
answered 71 at once, a temporary refusal its sender retries."""

_log = Logger()
_PEERCRED = struct.Struct("3i")


def socketPath(root):
    """C{ROOT/public/qmail-queue}."""
    return os.path.join(root, SOCKET_DIR, SOCKET_NAME)


def _peerCredentials(transport):
    sock = transport.getHandle()
    return _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def peerUid(transport):
    """The uid of the process at the other end of a Unix socket transport, from the kernel."""
    return _peerCredentials(transport)[1]


def peerPid(transport):
    """
    The pid of the client (the C{qmailtx queue} process), the message's qp as qmail-queue's
    own pid is; C{None} when the kernel cannot say (a client in another pid namespace).
    """
    try:
        pid = _peerCredentials(transport)[0]
    except (OSError, AttributeError):
        return None
    return pid or None


@implementer(IHalfCloseableProtocol)
class QueueSocketProtocol(Protocol, TimeoutMixin):
    """One client's message: chunks into the queue writer, then the envelope, then the answer."""

    def connectionMade(self):
        self.factory.clientStarted()
        self.callLater = self.factory.reactor.callLater
        self.setTimeout(self.factory.timeout)
        self._state = "message"
        self._decoder = MessageDecoder()
        self._envelope = EnvelopeReader()
        self._envelopeBytes = 0
        self._writer = None
        self._uid = None
        try:
            uid = self.factory.peerUid(self.transport)
        except (OSError, AttributeError):
            _log.failure("queue socket: no peer credentials")
            self._answer(81)
            return
        if not self.factory.admitUid(uid):
            log.warning(f"queue socket: uid {uid} has {self.factory.uidLimit} clients already; "
                        "refused one")
            self._answer(71)
            return
        self._uid = uid
        try:
            self._writer = self.factory.queue.begin(self.factory.howFor(uid), uid=uid,
                                                    qp=self.factory.peerPid(self.transport))
        except (TempFailure, PermFailure) as f:
            self._answer(qqExitCode(f))

    def dataReceived(self, data):
        if self._state == "message":
            self.resetTimeout()
            try:
                pieces, data = self._decoder.feed(data)
            except FramingError as e:
                self._fail(e.code)
                return
            for piece in pieces:
                self._writer.write(piece)
            if data is None:
                return
            self._state = "envelope"
        if self._state == "envelope":
            self.resetTimeout()
            self._envelopeBytes += len(data)
            if self._envelopeBytes > ENVELOPE_LIMIT:
                self._fail(51)
                return
            try:
                done = self._envelope.feed(data)
            except EnvelopeError as e:
                self._fail(e.code)
                return
            if done:
                self._commit()

    def _commit(self):
        self._state = "committing"
        self.setTimeout(None)
        self.transport.pauseProducing()
        sender, recipients = self._envelope.finish()
        d = self._writer.commit(sender, recipients)
        d.addCallbacks(lambda msgid: self._answer(0), self._ebCommit)

    def _ebCommit(self, failure):
        if failure.check(TempFailure, PermFailure):
            self._answer(qqExitCode(failure.value))
        else:
            _log.failure("queue socket: commit failed", failure)
            self._answer(81)

    def _fail(self, code):
        """Refuse the message: its files go, the client hears C{code}."""
        if self._writer is not None:
            self._writer.abort()
        self._answer(code)

    def _answer(self, code):
        self._state = "answered"
        self.setTimeout(None)
        if self.transport.connected:
            self.transport.write(encodeAnswer(code))
            self.transport.loseConnection()

    def readConnectionLost(self):
        """The client's end of input: a message or envelope cut short is qmail-queue's 54."""
        if self._state in ("message", "envelope"):
            self._fail(54)

    def writeConnectionLost(self):
        self.transport.loseConnection()

    def timeoutConnection(self):
        self._fail(52)

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._state in ("message", "envelope") and self._writer is not None:
            self._state = "lost"
            self._writer.abort()
        self.factory.clientEnded(self._uid)


class QueueSocketFactory(Factory):
    """
    The queue socket's clients share the daemon's L{qmailtx.queue.Queue}.  At most
    C{clientLimit} are served at once; the listening port stops accepting until one ends.
    At most C{uidLimit} of them may come from one uid (L{UID_LIMIT}).
    """

    protocol = QueueSocketProtocol

    def __init__(self, queue, root, reactor, peerUid=peerUid, timeout=STALL_TIMEOUT,
                 clientLimit=CLIENT_LIMIT, uidLimit=UID_LIMIT, ownUid=None, peerPid=peerPid):
        self.queue = queue
        self.root = root
        self.reactor = reactor
        self.peerUid = peerUid
        self.peerPid = peerPid
        self.timeout = timeout
        self.clientLimit = clientLimit
        self.uidLimit = uidLimit
        self.ownUid = ownUid
        self.clients = 0
        self.byUid = {}
        self.port = None

    def howFor(self, uid):
        """
        qmail-queue's Received wording for C{uid}; the alias user owns C{ROOT/alias}, unless
        that is the daemon's own uid (virtual mode: one uid is every role, and its own
        C{qmailtx queue} says C{by uid N}).
        """
        try:
            aliasUid = os.stat(os.path.join(self.root, "alias")).st_uid
        except OSError:
            aliasUid = None
        if aliasUid == os.geteuid():
            aliasUid = None
        return receivedHow(uid, aliasUid)

    def clientStarted(self):
        self.clients += 1
        if self.clients >= self.clientLimit and self.port is not None:
            self.port.stopReading()

    def unlimited(self, uid):
        """
        Root, and the daemon's own uid, asked when a client comes: a root-started daemon
        takes its account's uid only after the service is built.
        """
        return uid == 0 or uid == (os.geteuid() if self.ownUid is None else self.ownUid)

    def admitUid(self, uid):
        """Count a client of C{uid}; C{False} (not counted) when it has too many already."""
        if self.unlimited(uid):
            return True
        if self.byUid.get(uid, 0) >= self.uidLimit:
            return False
        self.byUid[uid] = self.byUid.get(uid, 0) + 1
        return True

    def clientEnded(self, uid=None):
        if uid is not None and uid in self.byUid:
            left = self.byUid[uid] - 1
            if left:
                self.byUid[uid] = left
            else:
                del self.byUid[uid]
        self.clients -= 1
        if self.clients == self.clientLimit - 1 and self.port is not None:
            self.port.startReading()


def prepareDirectory(path):
    """
    Make C{path} a real directory of ours, mode 0755 (anyone may reach the socket in it);
    raises C{OSError} if it is something else (a symlink, or another user's).
    """
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{path} is not a directory owned by uid {os.geteuid()}")
    os.chmod(path, 0o755)


def removeStale(path):
    """Remove a socket left by a daemon that did not stop cleanly; leave anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)


class QueueSocketService(service.Service):
    """Listens on L{socketPath} while the daemon runs; trouble is a warning, not a stop."""

    name = "queue-socket"

    def __init__(self, root, queue, reactor):
        self.root = root
        self._factory = QueueSocketFactory(queue, root, reactor)
        self.reactor = reactor
        self.port = None

    def startService(self):
        service.Service.startService(self)
        path = socketPath(self.root)
        try:
            prepareDirectory(os.path.dirname(path))
            removeStale(path)
            self.port = self.reactor.listenUNIX(path, self._factory, mode=0o666)
        except (OSError, CannotListenError) as e:
            log.warning(f"unable to listen on {path}: {e}; users who cannot write the "
                        "queue themselves cannot inject")
            return
        self._factory.port = self.port

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            self._factory.port = None
            return port.stopListening()
