"""
The pieces of C{--receivers} that need no process: the channel's packets and descriptors,
which listeners are handed off, and the AUTH throttle shared between receivers.
"""

import os
import socket

from twisted.internet.task import Clock

from qmailtx.receiver import ReceiverPool, _Receiver, handsOff
from qmailtx.receiverchannel import PACKET_LIMIT, Channel
from qmailtx.receiverchild import QUEUED_PER_PACKET, Receiver, SharedAuthThrottle
from qmailtx.smtpauth import AuthThrottle


class FakeReactor:
    running = False

    def __init__(self):
        self.readers, self.writers = set(), set()

    def addReader(self, r):
        self.readers.add(r)

    def removeReader(self, r):
        self.readers.discard(r)

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)


def channelPair():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    got, closed = [], []
    channel = Channel(mine, FakeReactor(), lambda p, fds: got.append((p, [os.fstat(f).st_ino for f in fds])),
                      lambda: closed.append(True))
    return channel, theirs, got, closed


def test_channelCarriesPacketsAndDescriptors(tmp_path):
    """A packet arrives whole with the descriptor it was sent with (the same open file), the
    sender may close its own copy at once, and packets are read one by one in order."""
    channel, theirs, got, closed = channelPair()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    assert channel.send(b"C{}", fd)
    os.close(fd)
    packet, fds, _, _ = socket.recv_fds(theirs, 1024, 1)
    assert packet == b"C{}" and len(fds) == 1
    assert os.fstat(fds[0]).st_ino == os.stat(path).st_ino
    os.close(fds[0])
    theirs.send(b"Q12")
    theirs.send(b"X3")
    channel.doRead()
    assert got == [(b"Q12", []), (b"X3", [])]
    assert not closed


def test_channelEndsWhenThePeerDoes():
    """EOF from the other process (it died or stopped) closes the channel once; sending then
    fails instead of queueing for nobody."""
    channel, theirs, got, closed = channelPair()
    theirs.close()
    channel.doRead()
    assert closed == [True]
    assert channel.send(b"A127.0.0.1") is False
    channel.close()
    assert closed == [True]


def test_channelQueuesWhileFull():
    """A full socket keeps the packets, in order, until it can be written again."""
    channel, theirs, got, closed = channelPair()
    sent = 0
    while not channel.reactor.writers:
        channel.send(b"E1 " + b"y" * 4000)
        sent += 1
        assert sent < 10000
    received = 0
    while True:
        try:
            theirs.setblocking(False)
            theirs.recv(8192)
            received += 1
        except BlockingIOError:
            channel.doWrite()
            if not channel.reactor.writers:
                break
    while True:
        try:
            theirs.recv(8192)
            received += 1
        except BlockingIOError:
            break
    assert received == sent


def test_handsOffOnlyPlainTCPMailListeners():
    """SMTP, submission, SMTPS, QMTP and QMQP on tcp/tcp6 endpoints go to receivers; POP3 and
    endpoints whose transport is not a plain socket (ssl:, unix:) stay in the daemon."""
    assert handsOff("smtp", "tcp:25:interface=0.0.0.0")
    assert handsOff("smtps", "tcp6:465")
    assert handsOff("qmqp", "tcp:628")
    assert not handsOff("pop3", "tcp:110")
    assert not handsOff("smtp", "ssl:465:privateKey=k.pem")
    assert not handsOff("smtp", "unix:/tmp/s")


def test_sharedThrottleReportsAndHears():
    """A receiver's AUTH failure is reported to the daemon; a failure heard from another
    receiver counts toward the same IP's delay here."""
    clock = Clock()
    reported = []
    throttle = SharedAuthThrottle(clock)
    throttle.report = reported.append
    first = throttle.failed("10.0.0.1", 1)
    assert reported == ["10.0.0.1"]
    throttle.heard("10.0.0.1")
    throttle.heard("10.0.0.1")
    assert throttle.recentFailures("10.0.0.1") == 3
    assert throttle.failed("10.0.0.1", 1) > first
    assert reported == ["10.0.0.1", "10.0.0.1"]


class StubChannel:
    def __init__(self):
        self.sent = []

    def send(self, packet, fd=None):
        self.sent.append(packet)
        return True


class StubReceiver:
    def __init__(self):
        self.channel = StubChannel()
        self.ready = True
        self.connections = {}


class StubSite:
    def __init__(self, clock):
        self.smtpAuthThrottle = AuthThrottle(clock)


def test_poolSpreadsAuthFailures():
    """The daemon counts a receiver's AUTH failure in its own throttle and tells every other
    receiver, not the one it came from."""
    site = StubSite(Clock())
    pool = ReceiverPool(site, {"listeners": []}, 3, reactor=None)
    origin, a, b = StubReceiver(), StubReceiver(), StubReceiver()
    pool.receivers = [origin, a, b]
    pool.authFailure("192.0.2.7", origin)
    assert origin.channel.sent == []
    assert a.channel.sent == [b"A192.0.2.7"] and b.channel.sent == [b"A192.0.2.7"]
    assert site.smtpAuthThrottle.recentFailures("192.0.2.7") == 1


def test_queuedGroupsTravelInOnePacketEach():
    """A receiver tells the daemon of a group commit's messages in one Q packet (chunked at
    QUEUED_PER_PACKET), and the daemon hands qmail-send every id of it at once."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    receiver = Receiver(FakeReactor(), mine, {})
    ids = list(range(1000, 1000 + QUEUED_PER_PACKET + 2))
    receiver.queued(ids)
    packets = [theirs.recv(PACKET_LIMIT) for _ in range(2)]
    assert all(len(p) < PACKET_LIMIT for p in packets)

    class Pool:
        heard = []

        def queued(self, msgids):
            self.heard.append(msgids)

    daemonSide = _Receiver(Pool(), 1)
    for packet in packets:
        daemonSide.packet(packet, [])
    assert Pool.heard == [ids[:QUEUED_PER_PACKET], ids[QUEUED_PER_PACKET:]]
    receiver.channel.close()
    theirs.close()


def test_endedReceiverWakesQmailSend(tmp_path):
    """A receiver that ends may have linked messages into todo/ without telling the daemon
    (its Q packet never sent, or still in the channel): the pool pulls lock/trigger, so
    qmail-send looks at todo/ now rather than at its 25-minute scan."""
    from twisted.python.failure import Failure

    queueDir = tmp_path / "queue"
    (queueDir / "lock").mkdir(parents=True)
    trigger = queueDir / "lock" / "trigger"
    os.mkfifo(trigger)
    reader = os.open(trigger, os.O_RDONLY | os.O_NONBLOCK)
    try:
        site = StubSite(Clock())

        class Queue:
            pass
        site.queue = Queue()
        site.queue.queueDir = str(queueDir)
        pool = ReceiverPool(site, {"listeners": []}, 1, reactor=Clock())
        receiver = StubReceiver()
        receiver.number = 1
        pool.receivers = [receiver]
        pool.ended(receiver, Failure(Exception("killed")))
        assert os.read(reader, 16) == b"\0"
        assert pool.receivers == []
    finally:
        os.close(reader)


def test_receiverLogLinesKeepTracebacks():
    """A receiver's logged failure reaches the daemon's log with its traceback on the one
    line, not as its first line alone."""
    from twisted.logger import Logger, LogLevel
    from twisted.python.failure import Failure

    from qmailtx.receiverchild import logLine

    events = []
    log = Logger(observer=events.append)
    try:
        raise ValueError("bad thing")
    except ValueError:
        log.failure("while calling from thread", Failure())
    log.info("receiver {n}: ready", n=1)
    failed, plain = (logLine(e) for e in events)
    assert failed.startswith("while calling from thread ")
    assert "Traceback" in failed and "ValueError: bad thing" in failed and "\n" not in failed
    assert plain == "receiver 1: ready"
    assert events[0]["log_level"] == LogLevel.critical


def test_handOffPassesOverADyingReceiver():
    """A connection offered to a receiver whose channel has just failed (it is being killed
    or is ending) goes to the next live receiver rather than being dropped."""

    class Dying(StubChannel):
        def send(self, packet, fd=None):
            return False

    class Transport:
        def getPeer(self):
            return type("Peer", (), {"host": "192.0.2.9"})()

        def fileno(self):
            return 0

    pool = ReceiverPool(StubSite(Clock()), {"listeners": []}, 2, reactor=None)
    dying, live = StubReceiver(), StubReceiver()
    dying.channel = Dying()
    live.connections = {1: object()}  # busier, so tried second
    pool.receivers = [dying, live]
    handle = type("Handle", (), {})()
    assert pool.handOff(handle, "qmqp", Transport(), {"TCPREMOTEIP": "192.0.2.9"})
    assert handle.receiver is live and live.channel.sent[0].startswith(b"C")
