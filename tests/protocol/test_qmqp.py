"""qmail-qmqpd's behaviour (spec/qmqp-qmtp.md §4.2) over a StringTransport."""

import pytest
from twisted.internet import defer

from tests.protocol.packagefakes import NOW, FakeQueue, closed, connect
from qmailtx import qmqp
from qmailtx.results import PermFailure, TempFailure

RECEIVED = b"Received: from unknown (127.0.0.1)\n  by mx.example.com with QMQP; 21 Nov 2024 19:26:00 -0000\n"
OK = b"22:Kok %d qp 4711," % NOW
BAD_ADDRESS = b"51:Dsorry, I can't accept addresses like that (#5.1.3),"
SPEC_EXAMPLE = (b"76:30:Subject: hi\n\nA simple message\n,18:sender@example.org,"
                b"16:rcpt@example.net,,")


def ns(data):
    return b"%d:%s," % (len(data), data)


def package(message, sender=b"sender@example.org", recipients=(b"rcpt@example.net",)):
    return ns(ns(message) + ns(sender) + b"".join(ns(r) for r in recipients))


def server(**kw):
    return connect(qmqp.QMQPFactory, **kw)


def test_specExample():
    """The spec's example package: one K reply, then the connection closes; the message
    is queued verbatim after our QMQP Received line."""
    assert package(b"Subject: hi\n\nA simple message\n") == SPEC_EXAMPLE
    proto, tr, queue, clock = server()
    proto.dataReceived(SPEC_EXAMPLE)
    assert tr.value() == OK
    assert closed(tr)
    [w] = queue.committed
    assert w.data == RECEIVED + b"Subject: hi\n\nA simple message\n"
    assert (w.sender, w.recipients) == (b"sender@example.org", [b"rcpt@example.net"])


def test_byteAtATimeAndVerbatim():
    """Read one byte at a time, the message is still copied byte for byte (CRs kept)."""
    proto, tr, queue, clock = server()
    message = b"a\r\nb\rc\n\0d"
    data = package(message, recipients=[b"a@x", b"", b"b@y"])
    for i in range(len(data)):
        proto.dataReceived(data[i:i + 1])
    assert tr.value() == OK
    [w] = queue.committed
    assert w.data == RECEIVED + message
    assert w.recipients == [b"a@x", b"", b"b@y"]


def test_anyRecipientRelayed():
    """No rcpthosts, no databytes: QMQP relays to anyone (restrict it with rules)."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"x" * 5000, recipients=[b"someone@anywhere.example"]))
    assert tr.value() == OK


@pytest.mark.parametrize("sender, recipients", [
    (b"s" * 1000, [b"r"]),
    (b"s\0", [b"r"]),
    (b"s", [b"r", b"x" * 1000]),
    (b"s", [b"r\0x"]),
])
def test_badAddress(sender, recipients):
    """An address of 1000+ bytes or with NUL: queueing is aborted and the reply is
    D sorry, I can't accept addresses like that."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", sender, recipients))
    assert tr.value() == BAD_ADDRESS
    assert closed(tr)
    assert queue.committed == []
    assert [w.state for w in queue.writers] == ["aborted"]


def test_addressLimits():
    """999-byte addresses are accepted."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", b"s" * 999, [b"r" * 999]))
    assert tr.value() == OK


@pytest.mark.parametrize("data", [
    b"x",
    b"1x:",
    b"0:,",
    b"4:0:,,",
    b"5:0:,;,",
    b"6:0:,0:,;",
    b"7:0:,1:a;,",
    b"9:0:,1:a,2:,",
    b"8:0:,1:a,,",
    b"12:5:ab,1:a,1:a,,",
    b"200000001:",
    b"12:0:,1:a,1:b,;",
])
def test_badSyntaxCloses(data):
    """Bad netstring syntax, a netstring running past the outer one, a package without a
    sender, a length over 200000000: the connection closes without a reply, nothing queued."""
    proto, tr, queue, clock = server()
    proto.dataReceived(data)
    assert tr.value() == b""
    assert closed(tr)
    assert queue.committed == []


def test_noRecipients():
    """A package with a sender and no recipient is refused with D (qmailtx decision)."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", recipients=[]))
    assert tr.value()[tr.value().index(b":") + 1:][:1] == b"D"
    assert closed(tr)
    assert queue.committed == []


@pytest.mark.parametrize("failure, reply", [
    (TempFailure(b"qq write error or disk full (#4.3.0)"), b"Zqq write error or disk full (#4.3.0)"),
    (PermFailure(b"envelope address too long for qq (#5.1.3)"),
     b"Denvelope address too long for qq (#5.1.3)"),
    (RuntimeError("surprise"), b"Zqq temporary problem (#4.3.0)"),
])
def test_queueFailure(failure, reply):
    """A failed commit gives the queue's D/Z text as the reply."""
    queue = FakeQueue()
    queue.results.append(failure)
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(SPEC_EXAMPLE)
    assert tr.value() == ns(reply)
    assert closed(tr)


def test_beginFailure():
    """A queue that cannot start a message: its Z text as the reply."""
    queue = FakeQueue()
    queue.beginFailure = TempFailure(b"qq trouble creating files in queue (#4.3.0)")
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(SPEC_EXAMPLE)
    assert tr.value() == ns(b"Zqq trouble creating files in queue (#4.3.0)")


def test_asyncCommitAndTrailingBytes():
    """The reply waits for the commit; bytes after the package are ignored."""
    queue = FakeQueue()
    pending = defer.Deferred()
    queue.results.append(pending)
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(SPEC_EXAMPLE + b"garbage")
    proto.dataReceived(b"more garbage")
    assert tr.value() == b"" and not closed(tr)
    pending.callback(7)
    assert tr.value() == OK
    assert closed(tr)
    assert len(queue.writers) == 1


def test_droppedMidPackage():
    """A client vanishing before the final comma leaves nothing queued."""
    proto, tr, queue, clock = server()
    proto.dataReceived(SPEC_EXAMPLE[:-1])
    proto.connectionLost(None)
    assert [w.state for w in queue.writers] == ["aborted"]
    assert queue.committed == []


def test_sessionLimit():
    """After 3600 s the session ends without a reply and the open message is dropped."""
    proto, tr, queue, clock = server()
    proto.dataReceived(SPEC_EXAMPLE[:40])
    clock.advance(3599)
    assert not closed(tr)
    clock.advance(1)
    assert closed(tr) and tr.value() == b""
    assert [w.state for w in queue.writers] == ["aborted"]


def test_receivedLine():
    """QMQP Received line: host, info, IP and local name from the environment."""
    env = {"TCPREMOTEIP": "10.9.8.7", "TCPREMOTEHOST": "relay.example", "TCPREMOTEINFO": "q",
           "TCPLOCALHOST": "hub.example"}
    proto, tr, queue, clock = server(env=env)
    proto.dataReceived(SPEC_EXAMPLE)
    assert queue.committed[0].data.startswith(
        b"Received: from relay.example (q@10.9.8.7)\n  by hub.example with QMQP; "
        b"21 Nov 2024 19:26:00 -0000\nSubject: hi\n")


def test_tooManyRecipients(monkeypatch):
    """More recipients than the named limit: closed as a resource error."""
    monkeypatch.setattr(qmqp, "MAX_RECIPIENTS", 3)
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m", recipients=[b"a"] * 5))
    assert closed(tr) and tr.value() == b""
    assert queue.committed == []
