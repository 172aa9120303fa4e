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
