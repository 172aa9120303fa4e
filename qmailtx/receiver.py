"""
Receiver processes: the protocol side of qmail-smtpd, qmail-qmtpd and qmail-qmqpd spread over
several processes, the way tcpserver runs one qmail-smtpd per connection.

The daemon keeps tcpserver's whole role (accept, the limits, the rules, the environment).  A
connection it admits on a handed-off listener goes, as its socket descriptor with the
environment, to the least busy L{ReceiverPool} process (C{qmailtx receiver}, see
L{qmailtx.receiverchild}), which runs the protocol and its own queue writer (qmail-queue's
role, the same crash protocol).  The receiver says when a message reached C{todo/}, so qmail-send
here hears of it at once, and when a connection closed, so tcpserver's counts stay exact.  One
CPython process is bound to one core; receivers let the protocol work use the others.

Messages on the channel (a C{SOCK_SEQPACKET} pair, one message per packet):
daemon to receiver C{C<json>} with the descriptor (a connection: id, listener, environment),
C{E<id> <bytes>} (bytes the client sent before admission), C{A<ip>} (an AUTH failure seen
elsewhere), C{S<name> ...} (spare queue files now the receiver's, maybe none); receiver to
daemon C{R} (ready), C{X<id>} (closed), C{Q<msgid> ...} (queued: a group commit), C{A<ip>}, C{S} (spares wanted).

Writes no files.  Must not import protocol modules: it moves descriptors and counts.
"""

import json
import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure

from qmailtx import log
from qmailtx.children import killChild
from qmailtx.queuelayout import pullTrigger
from qmailtx.receiverchannel import Channel
from qmailtx.spares import HAND_OUT, HAND_OUT_KEEP

CHANNEL_FD = 3
"""The channel's descriptor number in a receiver process."""
RESPAWN_DELAY = 1.0
"""Seconds before a receiver that died is started again."""
STOP_GRACE = 5.0
"""Seconds a receiver gets to exit after the daemon asks it to, before it is killed."""
STDERR_LIMIT = 4096
_CONTROLS = {c: "_" for c in range(32)}
HANDED_OFF = ("smtp", "submission", "smtps", "qmtp", "qmqp")
"""Listeners whose sessions receivers run (POP3 stays: its mailboxes have their own workers)."""


def handsOff(kind, description):
    """Whether a listener's connections may go to receivers: plain TCP endpoints only."""
    return kind in HANDED_OFF and description.split(":", 1)[0] in ("tcp", "tcp6")


class _Detached(Protocol):
    """Takes the daemon's half of a handed-off socket to its close, saying nothing."""


class _Receiver(ProcessProtocol):
    """One receiver process, its channel and the connections it runs."""

    def __init__(self, pool, number):
        self.pool = pool
        self.number = number
        self.connections = {}
        self.channel = None
        self.ready = False
        self.ended = defer.Deferred()
        self._stderr = b""
        self._killer = None

    def outReceived(self, data):
        self.errReceived(data)

    def errReceived(self, data):
        self._stderr = (self._stderr + data)[-STDERR_LIMIT:]
        while b"\n" in self._stderr:
            line, self._stderr = self._stderr.split(b"\n", 1)
            text = line.decode("utf-8", "replace").translate(_CONTROLS).strip()
            if text:
                log.event(f"receiver {self.number}: {text}")

    def packet(self, packet, fds):
        kind, body = packet[:1], packet[1:]
        if kind == b"X":
            handle = self.connections.pop(int(body), None)
            if handle is not None:
                handle.closedThere()
        elif kind == b"Q":
            self.pool.queued([int(msgid) for msgid in body.split()])
        elif kind == b"A":
            self.pool.authFailure(body.decode("ascii", "replace"), self)
        elif kind == b"S":
            self.pool.handSpares(self)
        elif kind == b"R":
            self.ready = True
            log.event(f"receiver {self.number}: ready, pid {self.transport.pid}")

    def channelClosed(self):
        self.channel = None
        try:
            self.transport.signalProcess("TERM")
        except (error.ProcessExitedAlready, OSError, AttributeError):
            pass

    def stop(self):
        if self.channel is not None:
            self.channel.close()
        self._killer = self.pool.reactor.callLater(STOP_GRACE, self._kill)
        return self.ended

    def _kill(self):
        killChild(self.transport)

    def processEnded(self, reason):
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        if self.channel is not None:
            self.channel.close()
        lost, self.connections = self.connections, {}
        for handle in lost.values():
            handle.closedThere()
        self.pool.ended(self, reason)
        self.ended.callback(None)


class ReceiverPool(service.Service):
    """
    The receiver processes of one daemon.

    @ivar count: how many run.
    """

    def __init__(self, site, config, count, reactor, python=None):
        self.site = site
        self.config = config
        self.count = count
        self.reactor = reactor
        self.python = python or sys.executable
        self.receivers = []
        self._ids = 0
        self._respawns = {}

    def startService(self):
        service.Service.startService(self)
        for number in range(1, self.count + 1):
            self._spawn(number)

    def stopService(self):
        service.Service.stopService(self)
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        return defer.DeferredList([r.stop() for r in list(self.receivers)])

    def _arguments(self):
        keep = {k: self.config.get(k) for k in ("root", "checkpassword", "nullclient",
                                                 "qmqpport")}
        keep["root"] = self.site.root
        keep["listeners"] = sorted({kind for kind, _ in self.config["listeners"]
                                    if kind in HANDED_OFF})
        return [self.python, "-m", "qmailtx.scripts.main", "receiver",
                "--fdsock", str(CHANNEL_FD), "--config", json.dumps(keep)]

    def _spawn(self, number):
        self._respawns.pop(number, None)
        receiver = _Receiver(self, number)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            args = self._arguments()
            self.reactor.spawnProcess(receiver, args[0], args, env=dict(os.environ),
                                      path=self.site.root,
                                      childFDs={0: "w", 1: "r", 2: "r",
                                                CHANNEL_FD: theirs.fileno()})
        except Exception as e:
            mine.close()
            log.warning(f"unable to start receiver {number}: {e}")
            self._respawnLater(number)
            return
        finally:
            theirs.close()
        receiver.channel = Channel(mine, self.reactor, receiver.packet, receiver.channelClosed)
        self.receivers.append(receiver)

    def _respawnLater(self, number):
        if self.running and number not in self._respawns:
            self._respawns[number] = self.reactor.callLater(RESPAWN_DELAY, self._spawn, number)

    def ended(self, receiver, reason):
        """
        A receiver process ended.  It may have linked messages into C{todo/} whose C{Q}
        packet never came (or was still in the channel): qmail-send is told to look at
        C{todo/} now, not at its next scan 25 minutes on.
        """
        if receiver in self.receivers:
            self.receivers.remove(receiver)
        pullTrigger(self.site.queue.queueDir)
        if self.running:
            log.warning(f"receiver {receiver.number} exited: {reason.getErrorMessage()}; "
                        f"starting it again")
            self._respawnLater(receiver.number)

    def available(self):
        """Whether a receiver can take a connection now."""
        return any(r.ready and r.channel is not None for r in self.receivers)

    def handOff(self, handle, kind, transport, env):
        """
        Give C{transport}'s socket with C{env} to the least busy receiver; C{True} once it
        is on its way (the caller then closes its own copy), C{False} if none can take it.
        """
        self._ids += 1
        number = self._ids
        peer = transport.getPeer()
        family = socket.AF_INET6 if ":" in getattr(peer, "host", "") else socket.AF_INET
        packet = b"C" + json.dumps({"id": number, "kind": kind, "env": env,
                                    "family": int(family)}).encode("utf-8", "surrogateescape")
        live = [r for r in self.receivers if r.ready and r.channel is not None]
        # Least busy first; a receiver whose channel has just failed (it is dying) is
        # passed over for the next.
        for receiver in sorted(live, key=lambda r: len(r.connections)):
            if receiver.channel is not None and receiver.channel.send(packet, transport.fileno()):
                receiver.connections[number] = handle
                handle.receiver, handle.number = receiver, number
                return True
        return False

    def early(self, handle, data):
        if handle.receiver is not None and handle.receiver.channel is not None:
            handle.receiver.channel.send(b"E%d " % handle.number + data)

    def queued(self, msgids):
        self.site.queue.notifyQueued(msgids)

    def handSpares(self, receiver):
        """Answer a receiver's C{S}: spare queue files the queue manager's pool can spare."""
        pool = getattr(self.site.queue, "spares", None)
        names = pool.handOut(HAND_OUT, HAND_OUT_KEEP) if pool is not None else []
        if receiver.channel is not None:
            receiver.channel.send(b"S" + " ".join(names).encode("ascii"))

    def authFailure(self, ip, origin=None):
        """An AUTH failure of C{ip}: counted here and in every other receiver."""
        throttle = getattr(self.site, "smtpAuthThrottle", None)
        if throttle is not None:
            throttle.failed(ip, 0)
        packet = b"A" + ip.encode("ascii", "replace")
        for receiver in self.receivers:
            if receiver is not origin and receiver.channel is not None:
                receiver.channel.send(packet)


class _HandedOff(Protocol):
    """
    The daemon's stand-in for a connection a receiver runs: it holds the connection's slot
    in the rules layer until the receiver says the connection closed.
    """

    receiver = None
    number = None

    def __init__(self, pool, kind):
        self.pool = pool
        self.kind = kind

    def makeConnection(self, transport):
        self.connected = 1
        self.transport = transport
        handedOff = self.pool.handOff(self, self.kind, transport, getattr(self, "env", {}))
        transport.protocol = _Detached()
        if handedOff:
            # The receiver has its own descriptor now: close ours without shutdown(2),
            # which would end the connection for it too.  Keep nothing of it: an idle
            # connection must cost the daemon only this small record.
            transport._shouldShutdown = False
            transport.loseConnection()
            self.transport = None
            self.__dict__.pop("env", None)
        else:
            log.warning(f"{self.kind}: no receiver could take a connection; dropped")
            transport.abortConnection()
            self.closedThere()

    def dataReceived(self, data):
        self.pool.early(self, data)

    def closedThere(self):
        if self.connected:
            self.connected = 0
            self.connectionLost(Failure(error.ConnectionDone()))

    def connectionLost(self, reason):
        self.connected = 0


class HandOffFactory(Factory):
    """
    A listener's factory when receivers run: connections go to them, or, while none is up,
    to C{local} (the same listener in this process), so the service never stops answering.
    """

    def __init__(self, pool, kind, local):
        self.pool = pool
        self.kind = kind
        self.local = local
        self.busyReply = getattr(local, "busyReply", b"")

    def doStart(self):
        self.local.doStart()

    def doStop(self):
        self.local.doStop()

    def buildProtocol(self, addr):
        if self.pool.available():
            return _HandedOff(self.pool, self.kind)
        return self.local.buildProtocol(addr)

