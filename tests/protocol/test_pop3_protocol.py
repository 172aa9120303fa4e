"""
POP3 protocol objects over StringTransport with a fake clock: idle timeouts, clients that
never authenticate, line limits, and the one-checkpassword-call rule (spec/pop3.md §1, general).
"""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from qmailtx import checkpassword, pop3


class FakeBoxes:
    def __init__(self):
        self.opened = []

    def open(self, who, name):
        self.opened.append((who, name))
        return defer.fail(AssertionError("not reached"))


def make(checker=None):
    reactor = MemoryReactorClock()
    calls = []

    def fakeChecker(*args):
        calls.append(args)
        return defer.fail(checkpassword.Refused(checkpassword.AUTH_FAILED, 1))

    config = pop3.POP3Config(hostname=b"h.example", checkpassword=[b"/bin/false"],
                             mailboxes=FakeBoxes(), checker=checker or fakeChecker,
                             refuseRoot=False)
    proto = pop3.POP3Factory(config, reactor).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, reactor, calls


def test_idleTimeoutClosesSilently():
    """A client that never sends a command is dropped after 1200 s without any reply."""
    proto, transport, clock, _ = make()
    greeting = transport.value()
    clock.advance(1199)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.value() == greeting
    assert transport.disconnecting or transport.disconnected


def test_timeoutRestartsOnEachCommand():
    """Each command line restarts the 1200 s timer."""
    proto, transport, clock, _ = make()
    for _ in range(3):
        clock.advance(1000)
        proto.dataReceived(b"NOOP\r\n")
    assert not transport.disconnecting


def test_lineWithoutCRAndCase():
    """Commands end at LF (one CR stripped) and verbs are case-insensitive."""
    proto, transport, _, _ = make()
    transport.clear()
    proto.dataReceived(b"nOoP\nNOOP\r\r\n")
    assert transport.value() == b"+OK \r\n-ERR authorization first\r\n"


def test_longLineCloses():
    """A line longer than LINE_LIMIT without LF closes the connection without a reply."""
    proto, transport, _, _ = make()
    transport.clear()
    proto.dataReceived(b"A" * (pop3.LINE_LIMIT + 10))
    assert transport.value() == b""
    assert transport.disconnecting


def test_oneAttemptThenNothing():
    """After a refused PASS, pipelined commands are ignored and the checker ran once."""
    proto, transport, _, calls = make()
    transport.clear()
    proto.dataReceived(b"USER a\r\nPASS b\r\nUSER a\r\nPASS c\r\nNOOP\r\n")
    assert transport.value() == b"+OK \r\n-ERR authorization failed\r\n"
    assert len(calls) == 1
    assert calls[0][2:5] == (b"a", b"b", proto.timestamp)


def test_pendingInputLimit():
    """While a command is in flight, input beyond PENDING_LIMIT stops reading from the client."""
    proto, transport, _, _ = make(checker=lambda *a: defer.Deferred())
    proto.dataReceived(b"USER a\r\nPASS b\r\n")
    proto.dataReceived(b"NOOP\r\n" * (pop3.PENDING_LIMIT // 6 + 10))
    assert transport.producerState == "paused"


class RecordingBox:
    """A mailbox double: fixed messages, and a record of update() calls."""

    def __init__(self, messages):
        self.messages = messages
        self.updates = []
        self.released = False

    def update(self, deleted, kept):
        self.updates.append((deleted, kept))
        return defer.succeed(0)

    def release(self):
        self.released = True


def transaction(messages):
    box = RecordingBox(messages)

    class Boxes:
        def open(self, who, name):
            return defer.succeed(box)

    def checker(*args):
        return defer.succeed(checkpassword.Authenticated(b"u", b"/home/u", 1000, 1000))

    proto, transport, _, _ = make(checker=checker)
    proto.config.mailboxes = Boxes()
    proto.dataReceived(b"USER u\r\nPASS p\r\n")
    transport.clear()
    return proto, transport, box


def test_quitWithNothingToChangeSkipsTheUpdate():
    """QUIT with nothing deleted and nothing in new/ answers +OK without asking the mailbox to update."""
    proto, transport, box = transaction([(b"cur/a:2,", 3), (b"cur/b:2,S", 4)])
    proto.dataReceived(b"QUIT\r\n")
    assert transport.value() == b"+OK \r\n"
    assert box.updates == []
    assert transport.disconnecting


def test_quitUpdatesDeletedAndNew():
    """QUIT passes the deleted names and the kept new/ names to update(), in listing order."""
    proto, transport, box = transaction([(b"new/a", 1), (b"cur/b:2,", 2), (b"new/c", 3),
                                         (b"cur/d:2,", 4)])
    proto.dataReceived(b"DELE 2\r\nDELE 3\r\nLIST\r\nSTAT\r\nQUIT\r\n")
    assert transport.value() == (b"+OK \r\n+OK \r\n+OK \r\n1 1\r\n4 4\r\n.\r\n+OK 4 5\r\n"
                                 b"+OK \r\n")
    assert box.updates == [([b"cur/b:2,", b"new/c"], [b"new/a"])]


def test_greetingStampsDifferAcrossListeners():
    """
    Every greeting's APOP timestamp differs (RFC 1939 §7), also between the POP3 and POP3S
    listeners of one daemon: their factories once counted from the same number.
    """
    reactor = MemoryReactorClock()
    config = pop3.POP3Config(hostname=b"h.example", checkpassword=[b"/bin/false"],
                             mailboxes=FakeBoxes(), refuseRoot=False)
    stamps = set()
    factories = [pop3.POP3Factory(config, reactor),
                 pop3.POP3Factory(config, reactor, implicitTLS=True)]
    for _ in range(3):
        for factory in factories:
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            stamps.add(proto.timestamp)
    assert len(stamps) == 6


def test_greetingSerialsGrowAcrossRestarts():
    """
    A daemon started later counts from a higher number than an earlier one reached (it
    starts from the clock in microseconds), so a restart within one second cannot repeat
    a timestamp of the previous process.
    """
    first = pop3.greetingSerials(clock=lambda: 1000.0)
    for _ in range(1000):
        reached = next(first)
    assert next(pop3.greetingSerials(clock=lambda: 1000.01)) > reached


def test_commandEndsAtNUL():
    """
    A command ends at its first NUL, as qmail-popup's C strings do: the client cannot put
    a NUL into a checkpassword field and choose the fd-3 fields after it (an APOP digest
    followed by an old timestamp would replay that old login).
    """
    proto, transport, _, calls = make()
    proto.dataReceived(b"APOP joe 0123abcd\0<1.2@old>\r\n")
    assert calls[0][2:5] == (b"joe", b"0123abcd", proto.timestamp)
    proto, transport, _, calls = make()
    transport.clear()
    proto.dataReceived(b"USER alice\0secret\r\nPASS x\r\n")
    assert transport.value() == b"+OK \r\n-ERR authorization failed\r\n"
    assert calls[0][2:5] == (b"alice", b"x", proto.timestamp)
    proto, transport, _, calls = make()
    transport.clear()
    proto.dataReceived(b"APOP jo\0e 0123abcd\r\nNOOP\0 x\r\n")
    assert transport.value() == b"-ERR syntax error\r\n+OK \r\n"
    assert calls == []


def test_saslFieldWithNULIsMalformed():
    """A decoded AUTH LOGIN or CRAM-MD5 field holding a NUL is malformed, as in SMTP AUTH."""
    import base64

    for exchange in ([b"AUTH LOGIN " + base64.b64encode(b"alice\0secret"), b"eA=="],
                     [b"AUTH LOGIN", b"YWxpY2U=", base64.b64encode(b"x\0y")]):
        proto, transport, _, calls = make()
        proto.config.cramMD5 = True
        transport.clear()
        proto.dataReceived(b"".join(line + b"\r\n" for line in exchange))
        assert transport.value().endswith(b"-ERR malformed auth input\r\n")
        assert calls == []
    proto, transport, _, calls = make()
    proto.config.cramMD5 = True
    transport.clear()
    proto.dataReceived(b"AUTH CRAM-MD5\r\n" + base64.b64encode(b"al\0ice 0123") + b"\r\n")
    assert transport.value().endswith(b"-ERR malformed auth input\r\n")
    assert calls == []


def test_hangUpCancelsTheChecker():
    """
    A client that hangs up while its checker runs has the checker cancelled (killed):
    otherwise --maxconn bounds sessions but not checkers.  A check already answered is
    not cancelled again, nor the mailbox open that follows it.
    """
    from twisted.python.failure import Failure

    cancelled = []
    checks = []

    def checker(*args):
        d = defer.Deferred(cancelled.append)
        checks.append(d)
        return d

    proto, transport, _, _ = make(checker=checker)
    proto.dataReceived(b"USER a\r\nPASS b\r\n")
    proto.connectionLost(Failure(Exception("gone")))
    assert cancelled == checks

    opens = []

    class Boxes:
        def open(self, who, name):
            opens.append(defer.Deferred(lambda d: opens.append("cancelled")))
            return opens[0]

    proto, transport, _, _ = make(checker=checker)
    proto.config.mailboxes = Boxes()
    proto.dataReceived(b"USER a\r\nPASS b\r\n")
    checks[-1].callback(checkpassword.Authenticated(b"a", b"/home/a", 1000, 1000))
    proto.connectionLost(Failure(Exception("gone")))
    assert len(cancelled) == 1 and len(opens) == 1
    box = RecordingBox([])
    opens[0].callback(box)
    assert box.released


class UnreadTransport(StringTransport):
    """
    A consumer like a TCP transport whose client reads nothing: it pauses its streaming
    producer once more than C{bound} bytes wait unsent, and resumes it when drained.
    """

    bound = 65536
    full = False

    def write(self, data):
        StringTransport.write(self, data)
        if (self.producer is not None and self.streaming and not self.full
                and len(self.value()) > self.bound):
            self.full = True
            self.producer.pauseProducing()

    def drain(self):
        sent = self.value()
        self.clear()
        if self.full:
            self.full = False
            self.producer.resumeProducing()
        return sent


def unreadSession(checker=None, boxes=None):
    proto, _, reactor, calls = make(checker=checker)
    if boxes is not None:
        proto.config.mailboxes = boxes
    transport = UnreadTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_unreadRepliesStopReading():
    """
    A client that pipelines commands and reads no replies has no further command acted
    on once the unsent replies pass the transport's bound (we are its producer), and is
    no longer read from once PENDING_LIMIT of commands wait: memory stays bounded (23 MB
    of CAPA once grew the daemon by 590 MB).  Drained, every command is answered, in order.
    """
    proto, transport = unreadSession()
    transport.clear()
    count = 20000
    proto.dataReceived(b"CAPA\r\n" * count)
    capa = b"".join(line + b"\r\n" for line in
                    [b"+OK Capability list follows"] + proto.capabilities(True) + [b"."])
    assert transport.producerState == "paused"
    assert len(transport.value()) <= transport.bound + len(capa)
    sent = []
    for _ in range(count):
        sent.append(transport.drain())
        if not transport.full:
            break
    sent.append(transport.value())
    assert transport.producerState == "producing"
    assert b"".join(sent) == capa * count


def test_unreadListingsStopReading():
    """After login too: pipelined UIDLs of a large maildir wait for the client to read."""
    box = RecordingBox([(b"cur/%d.x.host:2," % i, 100) for i in range(300)])

    class Boxes:
        def open(self, who, name):
            return defer.succeed(box)

    def checker(*args):
        return defer.succeed(checkpassword.Authenticated(b"u", b"/home/u", 1000, 1000))

    proto, transport = unreadSession(checker, Boxes())
    proto.dataReceived(b"USER u\r\nPASS p\r\n")
    transport.drain()
    proto.dataReceived(b"UIDL\r\n" * 1000)
    uidl = b"+OK \r\n" + b"".join(b"%d %d.x.host\r\n" % (i + 1, i) for i in range(300)) + b".\r\n"
    assert len(transport.value()) <= transport.bound + len(uidl)
    assert transport.producerState == "producing"
    proto.dataReceived(b"UIDL\r\n" * (pop3.PENDING_LIMIT // 6))
    assert transport.producerState == "paused"
    assert len(transport.value()) <= transport.bound + len(uidl)
    total = 0
    while True:
        total += len(transport.drain())
        if not transport.full:
            break
    total += len(transport.value())
    assert total == len(uidl) * (1000 + pop3.PENDING_LIMIT // 6)
