"""
The queue as an outside program (a C{QMAILQUEUE} set by a rules entry, or sendmail -bs's
qmail-queue), run the way qmail.c runs it: cwd the qmail root, message on fd 0, envelope on
fd 1, notqmail's error text on fd 6; the same C{begin()}/writer API as
L{qmailtx.queue.Queue}.  Writes nothing itself: the program does.
"""

import os

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ProcessProtocol

from qmailtx.queuefiles import _failureFor
from qmailtx.results import QQ_CRASHED, QQ_READ_ERROR, fromReport, qqExitFailure


CUSTOM_ERROR_LIMIT = 1024
"""Bytes of a queue program's fd-6 text kept (qmail uses the first 255 of them)."""


class ProgramQueue:
    """
    The queue as an outside program (a C{QMAILQUEUE} set by a rules entry), run the
    way qmail.c runs qmail-queue: cwd the qmail root, message on fd 0, envelope on
    fd 1, notqmail's error text on fd 6.  Same C{begin()}/writer API as L{Queue}.
    C{args} is the argv when the program needs arguments (default: the program alone).
    """

    def __init__(self, program, root, env, reactor, args=None):
        self.program = os.fsencode(program)
        self.args = [os.fsencode(a) for a in args] if args else [self.program]
        self.root = os.fsdecode(root)
        self.env = dict(env)
        self._reactor = reactor

    def addObserver(self, observer):
        """Accepted for symmetry; the program wakes qmail-send itself (its own trigger)."""

    def begin(self, how):
        """
        Start the program; C{how} is not passed on (a queue program judges its caller
        by uid).  Raises L{TempFailure} C{unable to exec qq} (its exit 120, which SMTP
        reports after the dot) if it cannot be executed, and C{OSError} if no process
        could be made (qmail-smtpd's failed pipe or fork: C{qqt failure} at DATA).
        """
        if not os.access(self.program, os.X_OK):
            raise _failureFor(120)
        protocol = _QueueProgramProtocol()
        transport = self._reactor.spawnProcess(
            protocol, self.program, self.args, env=self.env, path=self.root,
            childFDs={0: "w", 1: "w", 2: 2, 6: "r"})
        return ProgramWriter(protocol, transport)


class _QueueProgramProtocol(ProcessProtocol):
    def __init__(self):
        self.ended = Deferred()
        self.customText = b""
        self.closingInput = False
        self.inputLost = False

    def childDataReceived(self, fd, data):
        if fd == 6 and len(self.customText) < CUSTOM_ERROR_LIMIT:
            self.customText += data[:CUSTOM_ERROR_LIMIT - len(self.customText)]

    def childConnectionLost(self, fd):
        if fd == 0 and not self.closingInput:
            self.inputLost = True

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class ProgramWriter:
    """One message being fed to a queue program; C{qp} is the program's pid, as in qmail."""

    msgid = None

    def __init__(self, protocol, transport):
        self._protocol = protocol
        self._transport = transport
        self.qp = transport.pid
        self._state = "open"

    def _toChild(self, fd, data):
        """Write to a pipe unless the program already closed it (then the exit status tells)."""
        if fd in self._transport.pipes:
            self._transport.writeToChild(fd, data)

    def write(self, data):
        if self._state == "open":
            self._toChild(0, data)

    def registerProducer(self, producer, streaming):
        """Let the caller pause its socket while the program's stdin pipe is backed up."""
        pipe = self._transport.pipes.get(0)
        if pipe is not None:
            pipe.registerProducer(producer, streaming)

    def unregisterProducer(self):
        pipe = self._transport.pipes.get(0)
        if pipe is not None:
            pipe.unregisterProducer()

    def _closeInput(self):
        self._protocol.closingInput = True
        self._transport.closeChildFD(0)

    def commit(self, sender, recipients):
        """
        Close the message, send the envelope (unchecked: the program judges it), and
        fire with C{None} when it exits 0, else fail with qmail.c's text for its exit.
        """
        if self._state != "open":
            return fail(_failureFor(81))
        self._state = "committing"
        envelope = b"".join([b"F", sender, b"\0"] + [b"T%s\0" % r for r in recipients] + [b"\0"])
        self._closeInput()
        self._toChild(1, envelope)
        self._transport.closeChildFD(1)
        return self._protocol.ended.addCallback(self._cbEnded)

    def _cbEnded(self, status):
        if getattr(status, "signal", None) is not None:
            raise fromReport(QQ_CRASHED)
        code = getattr(status, "exitCode", 0) or 0
        if code:
            raise qqExitFailure(code, self._protocol.customText)
        if self._protocol.inputLost:
            raise fromReport(QQ_READ_ERROR)
        return None

    def abort(self):
        """
        Close both pipes without an envelope: the program exits 54 and removes its files.
        A producer still registered is let go first: a pipe that has one only resumes it
        when its buffer drains, and would never close.
        """
        if self._state != "open":
            return
        self._state = "aborted"
        self.unregisterProducer()
        self._closeInput()
        self._transport.closeChildFD(1)
        self._protocol.ended.addErrback(lambda f: None)
