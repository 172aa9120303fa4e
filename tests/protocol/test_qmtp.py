"""qmail-qmtpd's behaviour (spec/qmqp-qmtp.md §2) over a StringTransport."""

import pytest
from twisted.internet import defer

from tests.protocol.packagefakes import NOW, FakeControls, FakeQueue, closed, connect
from qmailtx import qmtp
from qmailtx.control import ControlError
from qmailtx.results import PermFailure, TempFailure

RECEIVED = b"Received: from unknown (127.0.0.1)\n  by mx.example.com with QMTP; 21 Nov 2024 19:26:00 -0000\n"
OK = b"22:Kok %d qp 4711," % NOW
RCPTHOSTS = b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
BADRCPT = b"46:Dsorry, I can't handle that recipient (#5.1.3),"


def ns(data):
    return b"%d:%s," % (len(data), data)


def package(message, sender=b"God-DSN-37@heaven.af.mil", recipients=(b"djb@silverton.berkeley.edu",),
            dos=False):
    return (ns((b"\r" if dos else b"\n") + message) + ns(sender)
            + ns(b"".join(ns(r) for r in recipients)))


def server(**kw):
    return connect(qmtp.QMTPFactory, **kw)


def test_specExample():
    """One LF package: the spec's example reply, and the queued message is our Received
    line followed by the message bytes unchanged, with the envelope as sent."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"Subject: x\n\nThis is a test.\n"))
    assert tr.value() == OK
    [w] = queue.committed
    assert w.data == RECEIVED + b"Subject: x\n\nThis is a test.\n"
    assert w.sender == b"God-DSN-37@heaven.af.mil"
    assert w.recipients == [b"djb@silverton.berkeley.edu"]
    assert not closed(tr)


def test_byteAtATime():
    """The same package dribbled one byte per read gives the same result."""
    proto, tr, queue, clock = server()
    data = package(b"a\r\nb\rc\r\r\n", dos=True)
    for i in range(len(data)):
        proto.dataReceived(data[i:i + 1])
    assert tr.value() == OK
    assert queue.committed[0].data == RECEIVED + b"a\nb\rc\r\n"


@pytest.mark.parametrize("message, stored", [
    (b"a\r\nb\r\n", b"a\nb\n"),
    (b"lone\rcr\r\n", b"lone\rcr\n"),
    (b"x\r\r\n", b"x\r\n"),
    (b"ends in cr\r", b"ends in cr\r"),
    (b"bare\nlf\r\n", b"bare\nlf\n"),
    (b"", b""),
])
def test_dosEncoding(message, stored):
    """CR mode: each CR LF becomes LF, every other CR is kept (also a final one)."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(message, dos=True))
    assert queue.committed[0].data == RECEIVED + stored


def test_unixEncodingVerbatim():
    """LF mode: bytes are copied as they are, CRs included."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"a\r\nb\rc\n"))
    assert queue.committed[0].data == RECEIVED + b"a\r\nb\rc\n"


@pytest.mark.parametrize("data", [
    b"0:,",
    b"3:abc,",
    b"1:x,",
    b"3:\nab;",
    b"3:\nab,1x:a,",
    b"3:\nab,0:,7:2:ab,xx,,",
    b"3:\nab,0:,5:1:a,,x",
    b"3:\nab,0:,4:3:ab,,",
    b"3:\nab,0:,4:1:a,;",
    b"200000001:",
])
def test_protocolErrorsClose(data):
    """Empty message, a first byte other than LF/CR, bad netstrings (in the recipient
    list too), a recipient running past its list, a length over 200000000: the connection
    is closed without a response and nothing is queued."""
    proto, tr, queue, clock = server()
    proto.dataReceived(data)
    assert tr.value() == b""
    assert closed(tr)
    assert queue.committed == []
    assert all(w.state == "aborted" for w in queue.writers)


def test_perRecipientResponsesInOrder():
    """One response per recipient, in order: accepted ones get the queue result, others
    the rcpthosts or can't-handle reply; only accepted ones reach the envelope."""
    controls = FakeControls(rcpthosts=[b"example.com", b".sub.example.org"])
    proto, tr, queue, clock = server(controls=controls)
    recipients = [b"a@example.com", b"b@other.net", b"c@x.sub.example.org", b"d@" + b"x" * 998,
                  b"e@ex\0ample.com", b"local", b"F@EXAMPLE.COM", b"g@sub.example.org"]
    proto.dataReceived(package(b"m\n", recipients=recipients))
    assert tr.value() == OK + RCPTHOSTS + OK + BADRCPT + BADRCPT + OK + OK + RCPTHOSTS
    assert queue.committed[0].recipients == [b"a@example.com", b"c@x.sub.example.org", b"local",
                                             b"F@EXAMPLE.COM"]


def test_recipientLengthLimit():
    """A recipient of 999 bytes is fine; 1000 bytes is refused with the 46: reply."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", recipients=[b"x" * 999, b"y" * 1000]))
    assert tr.value() == OK + BADRCPT
    assert queue.committed[0].recipients == [b"x" * 999]


def test_morercpthosts():
    """morercpthosts.cdb extends rcpthosts (only when rcpthosts exists)."""
    more = {b"more.example"}
    proto, tr, queue, clock = server(controls=FakeControls(
        rcpthosts=[b"example.com"], **{"morercpthosts.cdb": more}))
    proto.dataReceived(package(b"m\n", recipients=[b"a@more.example", b"b@no.example"]))
    assert tr.value() == OK + RCPTHOSTS


def test_relayclient():
    """RELAYCLIENT set: no rcpthosts check, its value appended; its length counts
    toward the 1000-byte limit."""
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPLOCALHOST": "mx.example.com", "RELAYCLIENT": "@fix"}
    proto, tr, queue, clock = server(env=env, controls=FakeControls(rcpthosts=[b"example.com"]))
    proto.dataReceived(package(b"m\n", recipients=[b"a@elsewhere.net", b"x" * 995, b"y" * 996]))
    assert tr.value() == OK + OK + BADRCPT
    assert queue.committed[0].recipients == [b"a@elsewhere.net@fix", b"x" * 995 + b"@fix"]


@pytest.mark.parametrize("dos", [False, True])
def test_databytes(dos):
    """databytes: exactly that many bytes pass; one more fails every accepted recipient
    with the databytes reply and queues nothing (CR mode counts after conversion)."""
    controls = FakeControls(databytes=10, rcpthosts=[b"example.com"])
    proto, tr, queue, clock = server(controls=controls)
    fits = b"123456789\r\n" if dos else b"123456789\n"
    proto.dataReceived(package(fits, dos=dos, recipients=[b"a@example.com"]))
    assert tr.value() == OK
    tr.clear()
    proto.dataReceived(package(fits + b"x", dos=dos, recipients=[b"a@example.com", b"b@no.net"]))
    reply = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"
    assert tr.value() == ns(reply) + RCPTHOSTS
    assert len(queue.committed) == 1
    assert all(w.state in ("committed", "aborted") for w in queue.writers)


@pytest.mark.parametrize("value, limit", [("5", 5), ("5x", 5), ("abc", 0), ("", 0)])
def test_databytesEnvironment(value, limit):
    """DATABYTES overrides control/databytes; leading digits count, none means unlimited."""
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPLOCALHOST": "mx.example.com", "DATABYTES": value}
    proto, tr, queue, clock = server(env=env, controls=FakeControls(databytes=2))
    proto.dataReceived(package(b"x" * 5))
    proto.dataReceived(package(b"x" * 6))
    assert len(queue.committed) == (1 if limit == 5 else 2)


@pytest.mark.parametrize("sender", [b"s" * 1000, b"bad\0sender"])
def test_unacceptableSender(sender):
    """A sender of 1000+ bytes or with NUL: accepted recipients get D unacceptable sender,
    nothing is queued; databytes overrides that text."""
    proto, tr, queue, clock = server(controls=FakeControls(rcpthosts=[b"ok.net"]))
    proto.dataReceived(package(b"m\n", sender=sender, recipients=[b"a@ok.net", b"b@no.net"]))
    assert tr.value() == ns(b"Dunacceptable sender (#5.1.7)") + RCPTHOSTS
    assert queue.committed == []
    tr.clear()
    proto.env["DATABYTES"] = "1"
    proto.sessionStarted()
    proto.dataReceived(package(b"mm", sender=sender, recipients=[b"a@ok.net"]))
    assert tr.value() == ns(b"Dsorry, that message size exceeds my databytes limit (#5.3.4)")


def test_senderLimits():
    """A 999-byte sender and the empty sender are acceptable."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", sender=b"s" * 999) + package(b"m\n", sender=b""))
    assert [w.sender for w in queue.committed] == [b"s" * 999, b""]


def test_noAcceptedRecipient():
    """No accepted recipient: the queue attempt is aborted; only rejections are sent."""
    proto, tr, queue, clock = server(controls=FakeControls(rcpthosts=[b"ok.net"]))
    proto.dataReceived(package(b"m\n", recipients=[b"a@no.net"]) + package(b"m\n", recipients=[]))
    assert tr.value() == RCPTHOSTS
    assert queue.committed == []
    assert [w.state for w in queue.writers] == ["aborted", "aborted"]
    assert not closed(tr)


@pytest.mark.parametrize("failure, reply", [
    (TempFailure(b"qq write error or disk full (#4.3.0)"), b"Zqq write error or disk full (#4.3.0)"),
    (PermFailure(b"envelope address too long for qq (#5.1.3)"),
     b"Denvelope address too long for qq (#5.1.3)"),
    (RuntimeError("surprise"), b"Zqq temporary problem (#4.3.0)"),
])
def test_queueFailure(failure, reply):
    """A failed commit gives its D/Z text to every accepted recipient (unknown: Z)."""
    queue = FakeQueue()
    queue.results.append(failure)
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(package(b"m\n", recipients=[b"a", b"b"]))
    assert tr.value() == ns(reply) * 2


def test_beginFailure():
    """A queue that cannot start a message: Z with its text, the session goes on."""
    queue = FakeQueue()
    queue.beginFailure = TempFailure(b"qq trouble creating files in queue (#4.3.0)")
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(package(b"m\n"))
    assert tr.value() == ns(b"Zqq trouble creating files in queue (#4.3.0)")
    assert not closed(tr)


def test_pipelinedPackages():
    """Several packages in one read: each is queued, responses come in package order."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"one\n") + package(b"two\n", recipients=[b"a", b"b"])
                       + package(b"three\n"))
    assert tr.value() == (OK + b"22:Kok %d qp 4712," % NOW * 2 + b"22:Kok %d qp 4713," % NOW)
    assert [w.data[len(RECEIVED):] for w in queue.committed] == [b"one\n", b"two\n", b"three\n"]


def test_pendingCommitHoldsInput():
    """While a commit is pending, reading is paused and later input waits; the response
    of the first package is written before the second package is looked at."""
    queue = FakeQueue()
    pending = defer.Deferred()
    queue.results.append(pending)
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(package(b"one\n") + package(b"two\n")[:5])
    assert tr.producerState == "paused"
    assert len(queue.writers) == 1
    proto.dataReceived(package(b"two\n")[5:])
    assert tr.value() == b""
    pending.callback(1)
    assert tr.producerState == "producing"
    assert tr.value() == OK + b"22:Kok %d qp 4712," % NOW
    assert len(queue.committed) == 2


def test_protocolErrorAfterQueuedPackage():
    """A malformed package after a good one in the same read: the good one's response is
    sent first, then the connection closes (qmailtx decision: no duplicate delivery)."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"good\n") + b"3:\nab;")
    assert tr.value() == OK
    assert closed(tr)
    assert [w.state for w in queue.writers] == ["committed"]


def test_malformedWhileMessageOpen():
    """A bad recipient list after a message was streamed into the queue: that message is
    aborted, never committed."""
    proto, tr, queue, clock = server()
    proto.dataReceived(b"5:\nabcd,0:,")
    proto.dataReceived(b"5:1x:a,,")
    assert closed(tr)
    assert [w.state for w in queue.writers] == ["aborted"]


def test_connectionDroppedMidPackage():
    """The client vanishing mid-message leaves nothing queued."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"x" * 100)[:50])
    proto.connectionLost(None)
    assert [w.state for w in queue.writers] == ["aborted"]
    assert queue.committed == []


def test_sessionLimit():
    """The whole session may last 3600 s; then the connection is closed and an open
    message aborted, without a response."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"x" * 100)[:50])
    clock.advance(3599)
    assert not closed(tr)
    clock.advance(1)
    assert closed(tr)
    assert tr.value() == b""
    assert [w.state for w in queue.writers] == ["aborted"]


def test_receivedLineFromEnvironment():
    """Received line: remote host, remote info, IP and local host from the environment,
    unsafe bytes as '?', never a HELO part; TCPLOCALIP when TCPLOCALHOST is unset."""
    env = {"TCPREMOTEIP": "10.1.2.3", "TCPREMOTEHOST": "client host", "TCPREMOTEINFO": "joe",
           "TCPLOCALIP": "10.0.0.1"}
    proto, tr, queue, clock = server(env=env)
    proto.dataReceived(package(b"m\n"))
    assert queue.committed[0].data.startswith(
        b"Received: from client?host (joe@10.1.2.3)\n  by 10.0.0.1 with QMTP; "
        b"21 Nov 2024 19:26:00 -0000\n")


def test_outputBackpressure():
    """A client that does not read its responses stops us reading its packages."""
    proto, tr, queue, clock = server()
    proto.pauseProducing()
    assert tr.producerState == "paused"
    proto.resumeProducing()
    assert tr.producerState == "producing"


def test_queueBackpressure():
    """A queue writer whose pipe is full pauses the socket until it drains."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"x" * 100)[:50])
    producer = queue.writers[0].producer
    producer.pauseProducing()
    assert tr.producerState == "paused"
    producer.resumeProducing()
    assert tr.producerState == "producing"


def test_tooManyRecipients(monkeypatch):
    """More recipients than the named per-package limit: closed as a resource error."""
    monkeypatch.setattr(qmtp, "MAX_RECIPIENTS", 3)
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"m\n", recipients=[b"a"] * 3))
    assert tr.value() == OK * 3
    proto.dataReceived(package(b"m\n", recipients=[b"a"] * 4))
    assert closed(tr)
    assert tr.value() == OK * 3


def test_qmailqueueProgram():
    """QMAILQUEUE in the environment sends the message to that program's queue."""
    other = FakeQueue()
    calls = []

    def programQueue(program, env):
        calls.append(program)
        return other

    env = {"TCPREMOTEIP": "127.0.0.1", "QMAILQUEUE": "/bin/myqueue"}
    proto, tr, queue, clock = server(env=env, programQueue=programQueue)
    proto.dataReceived(package(b"m\n"))
    assert calls == ["/bin/myqueue"]
    assert len(other.committed) == 1 and queue.committed == []


def test_unreadableControls():
    """An unreadable control file closes the connection at once (qmail exits 111)."""
    controls = FakeControls()
    controls.error = ControlError("unable to read")
    proto, tr, queue, clock = server(controls=controls)
    assert closed(tr)
    assert tr.value() == b""


def test_pendingCommitThenGarbage():
    """Garbage pipelined behind a package whose commit is still pending: the package's
    response is written once the commit ends, and only then is the connection closed."""
    queue = FakeQueue()
    pending = defer.Deferred()
    queue.results.append(pending)
    proto, tr, queue, clock = server(queue=queue)
    proto.dataReceived(package(b"one\n") + b"x:")
    assert not closed(tr)
    pending.callback(1)
    assert tr.value() == OK
    assert closed(tr)


def test_largeMessageStreamed():
    """A message far larger than one read reaches the queue in pieces, byte-exact, and the
    protocol keeps none of it."""
    proto, tr, queue, clock = server()
    body = bytes(range(256)) * 8192
    data = package(body)
    for i in range(0, len(data), 65536):
        proto.dataReceived(data[i:i + 65536])
        assert len(proto._held) == 0
    [w] = queue.committed
    assert w.data == RECEIVED + body
    assert max(len(c) for c in w.chunks) <= 65536


def test_queuePauseEndsWithWriter():
    """A writer that paused us and then ends (its program gone, or the message done) does
    not leave the socket paused."""
    proto, tr, queue, clock = server()
    proto.dataReceived(package(b"x" * 100)[:50])
    queue.writers[0].producer.pauseProducing()
    assert tr.producerState == "paused"
    queue.writers[0].producer.stopProducing()
    assert tr.producerState == "producing"
    queue.writers[0].producer.pauseProducing()
    proto.dataReceived(package(b"x" * 100)[50:])
    assert tr.producerState == "producing"
    assert tr.value() == OK
