"""
The asking end of the flusher (L{qmailtx.flusher}): the daemon and each receiver start one
flusher process and ask it for the flushes of their group commits.  Moves bytes only; the
callers decide what a flush covers.  Must not import protocol or delivery modules.
"""

import collections
import os
import socket
import sys

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed

from qmailtx import log
from qmailtx.flusher import DONE, FLUSHER_FD, REQUEST
from qmailtx.queuefiles import _syncfs


class _FlusherProcess(protocol.ProcessProtocol):
    def __init__(self, client):
        self.client = client

    def errReceived(self, data):
        text = data.decode("utf-8", "replace").strip()
        if text:
            log.warning(f"flusher: {text}")

    def processEnded(self, reason):
        self.client._lost()


class FlushClient:
    """
    The asking end: C{flush()} returns a Deferred that fires when everything written
    before the call is durable, or fails with C{OSError}.  When the flusher is gone
    (C{running} false), callers flush in their own thread instead.
    """

    def __init__(self, reactor, sock):
        sock.setblocking(False)
        self.sock = sock
        self.reactor = reactor
        self.running = True
        """Takes requests; false once finishing or gone."""
        self._open = True
        self._finished = None
        self._waiting = collections.deque()
        reactor.addReader(self)

    @classmethod
    def start(cls, reactor, queueDir, python=sys.executable):
        """Spawn C{qmailtx flusher QUEUEDIR}; C{None} where syncfs(2) is unavailable."""
        if _syncfs is None:
            return None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client = cls(reactor, mine)
        try:
            reactor.spawnProcess(
                _FlusherProcess(client), python,
                [python, "-m", "qmailtx.scripts.main", "flusher", queueDir],
                env=dict(os.environ), path="/",
                childFDs={0: "w", 1: "r", 2: "r", FLUSHER_FD: theirs.fileno()})
        except Exception as e:
            log.warning(f"unable to start the flusher: {e}; flushing in threads")
            client.stop()
            return None
        finally:
            theirs.close()
        return client

    def fileno(self):
        return self.sock.fileno() if self._open else -1

    def logPrefix(self):
        """Events its answers set off belong to whoever asked, not to the flusher."""
        return "-"

    def flush(self):
        d = Deferred()
        try:
            self.sock.send(REQUEST)
        except OSError as e:
            self._lost()
            d.errback(OSError(e.errno or 5, "flusher gone"))
            return d
        self._waiting.append(d)
        return d

    def doRead(self):
        """One answer per call: there is seldom a second, and the reactor calls again if so."""
        try:
            answer = self.sock.recv(16)
        except BlockingIOError:
            return None
        except OSError:
            return self._lost()
        if not answer:
            return self._lost()
        if self._waiting:
            d = self._waiting.popleft()
            if answer == DONE:
                d.callback(None)
            else:
                d.errback(OSError(5, "syncfs failed"))
        return None

    def connectionLost(self, reason):
        """The reactor is shutting down (its disconnectAll): end quietly."""
        self.stop()

    def _lost(self):
        if self.running:
            log.warning("the flusher ended; flushing in threads")
        self._end("flusher gone")

    def finish(self):
        """
        Ask for nothing more (later flushes use threads); the flusher still answers what it
        was asked, then exits at our half-close.  The Deferred fires when it has.
        """
        self.running = False
        if not self._open:
            return succeed(None)
        if self._finished is None:
            self._finished = Deferred()
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._end("flusher gone")
        return self._finished

    def stop(self):
        """Close our end at once; what is still waiting fails."""
        self._end("flusher stopped")

    def _end(self, why):
        self.running = False
        if not self._open:
            return
        self._open = False
        self.reactor.removeReader(self)
        waiting, self._waiting = self._waiting, collections.deque()
        for d in waiting:
            d.errback(OSError(5, why))
        self.sock.close()
        finished, self._finished = self._finished, None
        if finished is not None:
            finished.callback(None)


def flushVia(flusher, blocking, f, *args):
    """
    A Deferred flush: by C{flusher} while it runs, else C{blocking(f, *args)} (the
    caller's thread pool, which also serves tests and systems without syncfs).
    """
    if flusher is not None and flusher.running:
        return flusher.flush()
    return blocking(f, *args)


class FlusherService(service.Service):
    """The daemon's flusher for C{queue}, started and stopped with the service tree."""

    def __init__(self, queue, reactor):
        self.queue = queue
        self.reactor = reactor

    def startService(self):
        service.Service.startService(self)
        self.queue.flusher = FlushClient.start(self.reactor, self.queue.queueDir)

    def stopService(self):
        """Flushes already asked for are answered (qmail-send and sessions still running
        when the tree stops need them); shutdown waits for that."""
        service.Service.stopService(self)
        flusher, self.queue.flusher = self.queue.flusher, None
        if flusher is not None:
            return flusher.finish()
        return None
