"""
One receiver process (C{qmailtx receiver}, started by L{qmailtx.receiver.ReceiverPool}): it
runs the SMTP, QMTP and QMQP sessions of the connections the daemon hands it, each with the
environment the daemon's rules layer built, and queues their messages with a queue writer
of its own.  It listens on nothing and reads no rules: admission stays with the daemon.

It ends when the daemon closes the channel (or on SIGTERM).  Writes C{pid/ mess/ intd/
todo/} through L{qmailtx.queue.Queue} only.  Must not import send or delivery modules.
"""

import json
import signal
import socket
import sys
import time

from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory

from qmailtx.receiverchannel import Channel
from qmailtx.smtpauth import AuthThrottle
from qmailtx.spares import SparePool

QUEUED_PER_PACKET = 1000
"""Message ids per C{Q} packet: at most about 21 KB (20-digit ids), below the channel's 64 KiB."""

SPARES_LOW = 32
"""A receiver asks the daemon for spare queue files when it holds fewer than this."""
SPARES_QUIET = 1.0
"""Seconds a receiver waits after an empty answer before it asks again."""


class HandedSpares(SparePool):
    """
    A receiver's spare queue files: names the queue manager's pool handed over the channel
    (C{S}), taken for this process's C{pid/} and C{intd/} files as the daemon's own queue
    takes them.  Without them every message here would allocate two inodes, and the
    daemon, with nobody to give its finished files to, would unlink them: on ext4 without
    a journal each freed inode then slows every allocation for minutes.
    """

    def __init__(self, queueDir, ask, clock=time.monotonic):
        SparePool.__init__(self, queueDir)
        self._ask = ask
        self._clock = clock
        self._asking = False
        self._quietUntil = 0.0

    def take(self, name, truncate=True):
        fd = SparePool.take(self, name, truncate)
        if len(self) < SPARES_LOW:
            self.want()
        return fd

    def want(self):
        """Ask the daemon for spares, unless asked already or lately answered with none."""
        if not self._asking and self._clock() >= self._quietUntil:
            self._asking = True
            self._ask()

    def answered(self, names):
        """The daemon's answer: C{names} are this receiver's now (none: ask again later)."""
        self._asking = False
        self.adopt(names)
        if not names:
            self._quietUntil = self._clock() + SPARES_QUIET


class SharedAuthThrottle(AuthThrottle):
    """The AUTH throttle of a receiver: its failures are told to the daemon, others' heard."""

    report = None

    def failed(self, ip, connectionFailures):
        delay = AuthThrottle.failed(self, ip, connectionFailures)
        if self.report is not None:
            self.report(ip)
        return delay

    def heard(self, ip):
        AuthThrottle.failed(self, ip, 0)


def _reportingClass(cls, cache, closed):
    """C{cls} whose C{connectionLost} also tells the daemon (by the instance's channel id)."""
    counted = cache.get(cls)
    if counted is None:
        def connectionLost(self, reason):
            try:
                cls.connectionLost(self, reason)
            finally:
                closed(self.receiverConnection)
        counted = cache[cls] = type(cls.__name__, (cls,), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "connectionLost": connectionLost})
    return counted


class _Adopting(Factory):
    """The factory C{adoptStreamConnection} calls: builds the listener's protocol with its env."""

    def __init__(self, inner, env, number, cache, closed):
        self.inner = inner
        self.env = env
        self.number = number
        self.cache = cache
        self.closed = closed

    def buildProtocol(self, addr):
        protocol = self.inner.buildProtocol(addr)
        if protocol is None:
            return None
        protocol.__class__ = _reportingClass(type(protocol), self.cache, self.closed)
        protocol.env = self.env
        protocol.receiverConnection = self.number
        return protocol


def sessionOf(transport):
    """
    The adopted session protocol of C{transport}, or C{None} if the factory built none.  An
    implicit-TLS session (SMTPS) starts TLS as it connects, so the connection's protocol is
    then the TLS layer wrapping it; early bytes go to that layer, the counts to the session.
    """
    protocol = getattr(transport, "protocol", None)
    while protocol is not None and not hasattr(protocol, "receiverConnection"):
        protocol = getattr(protocol, "wrappedProtocol", None)
    return protocol


class Receiver:
    """The sessions of one receiver process, fed by the channel from the daemon."""

    def __init__(self, reactor, sock, factories, throttle=None, spares=None):
        self.reactor = reactor
        self.factories = factories
        self.throttle = throttle
        self.spares = spares
        self.transports = {}
        self._classes = {}
        self.channel = Channel(sock, reactor, self.packet, self.channelClosed)
        if throttle is not None:
            throttle.report = lambda ip: self.channel.send(b"A" + ip.encode("ascii", "replace"))

    def queued(self, msgids):
        """One C{Q} packet for a group commit's messages (chunked far below the packet limit)."""
        for start in range(0, len(msgids), QUEUED_PER_PACKET):
            chunk = msgids[start:start + QUEUED_PER_PACKET]
            self.channel.send(b"Q" + b" ".join(b"%d" % msgid for msgid in chunk))

    def closed(self, number):
        self.transports.pop(number, None)
        self.channel.send(b"X%d" % number)

    def packet(self, packet, fds):
        kind, body = packet[:1], packet[1:]
        if kind == b"C":
            self._adopt(json.loads(body.decode("utf-8", "surrogateescape")), fds)
        elif kind == b"E":
            number, _, data = body.partition(b" ")
            transport = self.transports.get(int(number))
            if transport is not None and transport.connected:
                transport.protocol.dataReceived(data)
        elif kind == b"A" and self.throttle is not None:
            self.throttle.heard(body.decode("ascii", "replace"))
        elif kind == b"S" and self.spares is not None:
            self.spares.answered(body.decode("ascii", "replace").split())

    def _adopt(self, request, fds):
        number = request["id"]
        factory = self.factories.get(request["kind"])
        if not fds or factory is None:
            self.channel.send(b"X%d" % number)
            return
        env = {str(k): str(v) for k, v in request["env"].items()}
        adopting = _Adopting(factory, env, number, self._classes, self.closed)
        try:
            transport = self.reactor.adoptStreamConnection(fds[0], request["family"], adopting)
        except Exception as e:
            sys.stderr.write(f"unable to take connection {number}: {e}\n")
            self.channel.send(b"X%d" % number)
            return
        protocol = sessionOf(transport)
        if protocol is None:
            self.channel.send(b"X%d" % number)
            return
        self.transports[number] = transport

    def channelClosed(self):
        """The daemon is gone or stopping: finish by ending the reactor."""
        self.stop()

    def stop(self):
        """
        End the reactor, once: the daemon stops a receiver by closing its channel and
        sending SIGTERM, and both arrive while the stop waits for the commits in flight.
        SIGTERM and SIGINT come here too (L{_stopOnSignals}), not to Twisted's handlers,
        which would stop the reactor a second time and log the error.
        """
        if not self.reactor.running:
            return
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def logLine(event):
    """
    One line for the daemon's log (it prefixes C{receiver N:}), or C{""}: a logged
    failure keeps its traceback, folded onto the line, so a receiver's error says where.
    """
    from twisted.logger import formatEvent

    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += " " + failure.getTraceback()
    return text.replace("\n", " ").strip()


def _stopOnSignals(reactor, stop):
    """SIGTERM and SIGINT (unless ignored) end the receiver through C{stop}, on the
    reactor's thread; replaces the handlers Twisted installed as the reactor started."""
    for number in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(number) not in (signal.SIG_IGN, None):
            signal.signal(number, lambda number, frame: reactor.callFromThread(stop))


def run(config, fd, reactor=None):
    """Build the listeners' factories as the daemon would and serve the channel on C{fd}."""
    if reactor is None:
        from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from qmailtx.service import LISTENERS, Site

    def observer(event):
        line = logLine(event)
        if line:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    site = Site(config["root"], reactor)
    if config.get("nullclient"):
        from qmailtx.nullclient import QmqpQueue
        site.listenerQueue = QmqpQueue(site.controls, reactor, port=config["qmqpport"])
    throttle = SharedAuthThrottle(reactor)
    site.smtpAuthThrottle = throttle
    from qmailtx.tls import ContextCache
    site.smtpTLS = ContextCache()
    factories = {kind: LISTENERS[kind](site, config) for kind in config["listeners"]}
    sock = socket.socket(fileno=fd)
    spares = HandedSpares(site.queue.queueDir, lambda: receiver.channel.send(b"S"))
    receiver = Receiver(reactor, sock, factories, throttle, spares)
    site.queue.spares = spares
    site.queue.addObserver(receiver.queued)
    if not config.get("nullclient"):
        from qmailtx.flushclient import FlushClient
        site.queue.flusher = FlushClient.start(reactor, site.queue.queueDir)
    for factory in factories.values():
        factory.noisy = False
        factory.doStart()
    reactor.addSystemEventTrigger("before", "shutdown", site.commits.close)
    reactor.callWhenRunning(_stopOnSignals, reactor, receiver.stop)
    receiver.channel.send(b"R")
    spares.want()
    reactor.run()
    for factory in factories.values():
        factory.doStop()
    return 0


def main(argv):
    """C{qmailtx receiver --fdsock N --config JSON} (started by the daemon, not by hand)."""
    fd, config = None, None
    args = list(argv[1:])
    while args:
        flag = args.pop(0)
        if flag == "--fdsock" and args:
            fd = int(args.pop(0))
        elif flag == "--config" and args:
            config = json.loads(args.pop(0))
        else:
            break
    if fd is None or config is None:
        sys.stderr.write("receiver: usage: qmailtx receiver --fdsock N --config JSON "
                         "(started by twistd qmail)\n")
        return 100
    return run(config, fd)
