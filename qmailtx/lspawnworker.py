"""
One C{qmailtx deliverworker} process as L{qmailtx.lspawn.LocalSpawner} sees it: a
C{ProcessProtocol} that sends each delivery request with the message's open descriptor on a
Unix socket, reads the answer (a netstring report) on the worker's stdout, logs its stderr,
and tells the spawner when it is free again or gone.  Writes nothing; must not import the
queue or the network code.
"""

import os
import socket

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

from qmailtx import log, netstring
from qmailtx.children import killChild
from qmailtx.results import TempFailure, fromReport

ANSWER_LIMIT = 16 * 1024
"""Largest answer read from a worker (reports are cut to 3000 bytes there)."""
STDERR_LIMIT = 4096
"""Bytes of a worker's stderr kept per line for the log."""
KILL_GRACE = 10
"""Seconds a worker told to exit may take before it is killed."""

CRASHED = TempFailure(b"qmail-local crashed.\n")
UNABLE_TO_RUN = TempFailure(b"Unable to run qmail-local.\n")
NO_MESSAGE = TempFailure(b"qmail-spawn unable to open message. (#4.3.0)\n")


STOPPING = TempFailure(b"Delivery not started: qmailtx is stopping. (#4.3.0)\n")


class UnstartedWorker:
    """Stands in for a worker that could not be started (or, at shutdown, will not be)."""

    def __init__(self, result=UNABLE_TO_RUN):
        self.result = result

    def send(self, request, messPath):
        return defer.succeed(self.result)


class DeliveryWorker(ProcessProtocol):
    """
    One C{deliverworker --fdsock} process: one request at a time on its socket, answers as
    netstrings on its stdout.
    """

    def __init__(self, spawner, key, sock):
        self.spawner = spawner
        self.key = key
        self.sock = sock
        self.idleSince = spawner.reactor.seconds()
        self.pending = None
        self.closing = False
        self.ended = False
        self._decoder = netstring.NetstringDecoder(maxLength=ANSWER_LIMIT)
        self._answer = []
        self._stderr = b""
        self._killer = None

    def send(self, request, messPath):
        """
        One delivery: the request and the message opened here (we may read the queue; the
        worker, running as the user, may not) in one C{sendmsg} on the socket, so a
        delivery costs the reactor one system call and no write-readiness round.  The
        worker is idle, so the small request fits the empty socket buffer at once.
        """
        if self.ended or self.closing:
            return defer.succeed(CRASHED)
        try:
            fd = os.open(messPath, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.spawner.release(self)
            return defer.succeed(NO_MESSAGE)
        try:
            sent = socket.send_fds(self.sock, [request], [fd])
            if sent < len(request):
                self.sock.sendall(request[sent:])
        except OSError:
            self._kill()
            return defer.succeed(CRASHED)
        finally:
            os.close(fd)
        self.pending = defer.Deferred()
        return self.pending

    def outReceived(self, data):
        try:
            events = self._decoder.feed(data)
        except netstring.NetstringError:
            self._kill()
            return
        for event, value in events:
            if event == netstring.DATA:
                self._answer.append(value)
            elif event == netstring.END:
                report, self._answer = b"".join(self._answer), []
                self._answered(fromReport(report) if report else CRASHED)

    def _answered(self, result):
        d, self.pending = self.pending, None
        if d is None:
            self._kill()
            return
        if self.closing:
            self._armKiller()
        else:
            self.spawner.release(self)
        d.callback(result)

    def errReceived(self, data):
        self._stderr = (self._stderr + data)[-STDERR_LIMIT:]
        while b"\n" in self._stderr:
            line, self._stderr = self._stderr.split(b"\n", 1)
            log.warning(f"deliverworker {self.transport.pid}: {log.logsafe(line)}")

    def close(self):
        """
        Ask the worker to exit (EOF on its socket and stdin); kill it if it lingers.  A
        worker in the middle of a delivery finishes it first, however long it takes (as
        qmail-send waits for its deliveries at SIGTERM): killed, the delivery would be
        made again after the restart.  The grace period starts at its answer.
        """
        if self.closing or self.ended:
            return
        self.closing = True
        idle = self.spawner._idle.get(self.key)
        if idle and self in idle:
            idle.remove(self)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.transport.closeStdin()
        if self.pending is None:
            self._armKiller()

    def _armKiller(self):
        if self._killer is None and not self.ended:
            self._killer = self.spawner.reactor.callLater(KILL_GRACE, self._kill)

    def _kill(self):
        killChild(self.transport)

    def processEnded(self, reason):
        self.ended = True
        self.sock.close()
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        d, self.pending = self.pending, None
        self.spawner.forget(self)
        if d is not None:
            d.callback(CRASHED)
