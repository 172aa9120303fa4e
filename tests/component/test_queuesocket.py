"""
The queue socket's server (qmailtx.queuesocket) over a StringTransport into a real queue on a
temp dir: the client's uid from its credentials in the Received line and the todo record,
qmail-queue's exit codes for every way a client can go wrong, the answer held until the commit
is durable, a stalled client timed out, a large message streamed in bounded memory, the limits
on clients in all and per uid.
"""

import os
import tracemalloc

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from qmailtx import queuesocket
from qmailtx.envelope import encodeEnvelope
from qmailtx.queue import Queue
from qmailtx.queuelayout import createLayout
from qmailtx.queueframe import CHUNK_LIMIT, MESSAGE_END, encodeChunk
from qmailtx.results import qqExitReport

NOW = 1732217160
ENVELOPE = encodeEnvelope(b"joe@example.org", [b"a@example.net", b"b@example.net"])


def syncRun(f, *args):
    return defer.maybeDeferred(f, *args)


class Server:
    """One protocol of a factory over a real queue in C{root}; C{uid} is the peer's."""

    def __init__(self, root, uid=4242, runBlocking=syncRun, **kw):
        self.root = root
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.queue = Queue(root, reactor=self.clock, runBlocking=runBlocking)
        self.factory = queuesocket.QueueSocketFactory(
            self.queue, root, self.clock, peerUid=lambda transport: uid, **kw)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data):
        self.proto.dataReceived(data)

    def answer(self):
        return self.transport.value()

    def closed(self):
        return self.transport.disconnecting

    def files(self, kind):
        out = []
        for dirpath, _, names in os.walk(os.path.join(self.root, "queue", kind)):
            out += [os.path.join(dirpath, n) for n in names]
        return out

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


@pytest.fixture
def root(tmp_path):
    createLayout(str(tmp_path / "queue"))
    os.mkdir(tmp_path / "alias")
    return str(tmp_path)


def message(body):
    out = b""
    for i in range(0, len(body), 1000):
        out += encodeChunk(body[i:i + 1000])
    return out + MESSAGE_END


def test_clientUidInReceivedLineAndTodo(root):
    """The uid from the peer's credentials is the 'by uid' of the Received line and the todo u record."""
    s = Server(root, uid=4242)
    s.send(message(b"Subject: hi\n\nbody\n") + ENVELOPE)
    assert s.answer() == b"0\n"
    assert s.closed()
    [mess] = s.files("mess")
    [todo] = s.files("todo")
    qp = s.proto._writer.qp
    assert s.read(mess) == (b"Received: (qmail %d invoked by uid 4242); 21 Nov 2024 19:26:00 -0000\n"
                            b"Subject: hi\n\nbody\n" % qp)
    assert s.read(todo) == b"u4242\0p%d\0Fjoe@example.org\0Ta@example.net\0Tb@example.net\0" % qp
    assert os.path.basename(todo) == os.path.basename(mess)


def test_clientPidIsTheQp(root):
    """The peer's pid (its qmailtx queue process) is the message's qp, as qmail-queue's own
    pid is: a forwarding delivery reports that number in its did line."""
    s = Server(root, uid=4242, peerPid=lambda transport: 31337)
    s.send(message(b"Subject: hi\n\nbody\n") + ENVELOPE)
    assert s.answer() == b"0\n"
    [mess] = s.files("mess")
    [todo] = s.files("todo")
    assert s.read(mess).startswith(b"Received: (qmail 31337 invoked by uid 4242); ")
    assert s.read(todo).startswith(b"u4242\0p31337\0")


def test_byteAtATime(root):
    """Framing split at every byte still queues the message verbatim (NULs and frame characters too)."""
    s = Server(root)
    body = b"a\r\nb\0c,1:x,\n" * 3
    for i, byte in enumerate(message(body) + ENVELOPE + b"ignored after the envelope"):
        s.send(bytes([byte]))
    assert s.answer() == b"0\n"
    [mess] = s.files("mess")
    assert s.read(mess).endswith(b"\n" + body)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give alias/ away")
def test_aliasUserInvokedByAlias(root):
    """A client whose uid owns alias/ (and is not the daemon's) is 'invoked by alias', as qmail-queue says for uid alias."""
    os.chown(os.path.join(root, "alias"), 4243, 4243)
    s = Server(root, uid=4243)
    s.send(message(b"x\n") + ENVELOPE)
    [mess] = s.files("mess")
    assert b" invoked by alias); " in s.read(mess).split(b"\n")[0]


def test_answerOnlyAfterDurableCommit(root):
    """Nothing is answered while the queue's flush is still running; 0 follows once it is done."""
    held = []

    def runBlocking(f, *args):
        d = defer.Deferred()
        held.append((d, f, args))
        return d

    s = Server(root, runBlocking=runBlocking)
    s.send(message(b"x\n") + ENVELOPE)
    assert s.answer() == b""
    assert not s.closed()
    while held:
        d, f, args = held.pop(0)
        d.callback(f(*args))
    assert s.answer() == b"0\n"
    assert len(s.files("todo")) == 1


def assertRefused(s, code):
    assert s.answer() == b"%d\n" % code
    assert s.closed()
    assert s.files("mess") == [] and s.files("intd") == [] and s.files("todo") == []
    assert s.files("pid") == []


@pytest.mark.parametrize("wire, code", [
    (b"x", 54),
    (b"3:abcd", 54),
    (encodeChunk(b"abc") + b"99999999:", 54),
    (message(b"x\n") + b"Tno-sender\0\0", 91),
    (message(b"x\n") + b"Fa@b\0Xc\0\0", 91),
    (message(b"x\n") + b"F" + b"a" * 1003 + b"\0T\0\0", 11),
    (message(b"x\n") + b"Fa@b\0T" + b"r" * 1003, 11),
])
def test_badInputRefused(root, wire, code):
    """Bad framing is qmail-queue's 54 (read error), bad envelopes its 91/11; the message's files go."""
    s = Server(root)
    s.send(wire)
    assertRefused(s, code)


def test_refusedAfterFilesExist(root):
    """A bad envelope after a message large enough to be on disk removes the mess and pid files."""
    s = Server(root)
    s.send(message(b"y" * (CHUNK_LIMIT * 3)))
    assert len(s.files("mess")) == 1
    s.send(b"Fa@b\0Xbad\0")
    s.clock.advance(0)
    assertRefused(s, 91)


@pytest.mark.parametrize("wire", [b"", encodeChunk(b"half"), message(b"x\n"),
                                  message(b"x\n") + b"Fa@b\0Tc@d\0"])
def test_endOfInputBeforeTheEnvelopeEnds(root, wire):
    """A client that stops sending (half-close) before the envelope's final NUL gets 54 and nothing is queued."""
    s = Server(root)
    s.send(wire)
    s.proto.readConnectionLost()
    assertRefused(s, 54)


def test_clientGoneAbortsTheMessage(root):
    """A client that disconnects mid-message leaves no file behind and no answer is attempted."""
    s = Server(root)
    s.send(message(b"y" * (CHUNK_LIMIT * 3))[:-3])
    assert len(s.files("mess")) == 1
    s.transport.connected = False
    s.proto.connectionLost(None)
    assert s.files("mess") == [] and s.files("pid") == []
    assert s.factory.clients == 0


def test_envelopeLimit(root, monkeypatch):
    """An envelope over ENVELOPE_LIMIT bytes is answered 51 (qq out of memory), not stored up."""
    monkeypatch.setattr(queuesocket, "ENVELOPE_LIMIT", 100)
    s = Server(root)
    s.send(message(b"x\n") + b"Fa@b\0")
    for i in range(20):
        s.send(b"Tr%d@example.net\0" % i)
    assertRefused(s, 51)


def test_stalledClientTimedOut(root):
    """Silence for STALL_TIMEOUT seconds is answered 52 (qq timeout); activity restarts the wait."""
    s = Server(root, timeout=100)
    s.send(encodeChunk(b"part"))
    s.clock.advance(99)
    s.send(encodeChunk(b"more"))
    s.clock.advance(99)
    assert s.answer() == b""
    s.clock.advance(1)
    assertRefused(s, 52)


def test_defaultStallTimeout():
    """The default wait is 20 minutes (qmail-smtpd's), not qmail-queue's day."""
    assert queuesocket.STALL_TIMEOUT == 1200


def test_queueTroubleAnswered(root):
    """A queue that cannot take files answers a 'trouble creating files in queue' code, as qmail-queue exits."""
    os.rmdir(os.path.join(root, "queue", "pid"))
    s = Server(root)
    s.send(message(b"x\n") + ENVELOPE)
    code = int(s.answer())
    assert qqExitReport(code) == b"Zqq trouble creating files in queue (#4.3.0)"
    assert s.closed()


def test_noCredentials(root):
    """Without peer credentials nobody is trusted: 81 at once, nothing begun."""
    clock = task.Clock()
    factory = queuesocket.QueueSocketFactory(Queue(root, reactor=clock, runBlocking=syncRun),
                                             root, clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"81\n"
    proto.dataReceived(message(b"x\n") + ENVELOPE)
    assert transport.value() == b"81\n"


def test_largeMessageStreamedInBoundedMemory(root):
    """A 32 MB message passes through with well under 1 MB held: chunks go to the queue file as they come."""
    s = Server(root)
    block = encodeChunk(b"0123456789abcdef" * (CHUNK_LIMIT // 16))
    rounds = 32 * 1024 * 1024 // CHUNK_LIMIT
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            s.send(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < 1024 * 1024
    s.send(MESSAGE_END + ENVELOPE)
    assert s.answer() == b"0\n"
    [mess] = s.files("mess")
    received = s.read(mess).split(b"\n", 1)[0]
    assert os.path.getsize(mess) == len(received) + 1 + rounds * CHUNK_LIMIT


class FakePort:
    def __init__(self):
        self.reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


def test_clientLimitPausesAccepting(root):
    """At clientLimit clients the port stops accepting; it resumes when one ends."""
    clock = task.Clock()
    factory = queuesocket.QueueSocketFactory(Queue(root, reactor=clock, runBlocking=syncRun),
                                             root, clock, peerUid=lambda t: 1, clientLimit=2)
    factory.port = FakePort()
    protos = []
    for _ in range(2):
        p = factory.buildProtocol(None)
        p.makeConnection(StringTransport())
        protos.append(p)
    assert not factory.port.reading
    protos[0].connectionLost(None)
    assert factory.port.reading


def test_uidLimitRefusesTheUidsNextClient(root):
    """Past uidLimit clients of one uid, its next is answered 71 at once (no files begun);
    other uids are served, and the uid gets a place again when one of its clients ends."""
    clock = task.Clock()
    uids = iter([1000, 1000, 1000, 1001, 1000])
    factory = queuesocket.QueueSocketFactory(Queue(root, reactor=clock, runBlocking=syncRun),
                                             root, clock, peerUid=lambda t: next(uids),
                                             uidLimit=2, ownUid=4242)

    def connect():
        p = factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    first = connect()
    connect()
    refused, refusedTransport = connect()
    assert refusedTransport.value() == b"71\n" and refusedTransport.disconnecting
    assert qqExitReport(71) == b"Zmail server temporarily rejected message (#4.3.0)"
    other, otherTransport = connect()
    assert otherTransport.value() == b""
    refused.connectionLost(None)
    assert factory.byUid == {1000: 2, 1001: 1}
    first[0].connectionLost(None)
    again, againTransport = connect()
    assert againTransport.value() == b""
    again.dataReceived(message(b"x\n") + ENVELOPE)
    assert againTransport.value() == b"0\n"
    again.connectionLost(None)
    assert factory.byUid == {1000: 1, 1001: 1}


@pytest.mark.parametrize("uid", [0, 4242])
def test_rootAndTheDaemonsUidAreNotLimited(root, uid):
    """Root's clients and the daemon's own (virtual mode's deliveries) are never refused."""
    clock = task.Clock()
    factory = queuesocket.QueueSocketFactory(Queue(root, reactor=clock, runBlocking=syncRun),
                                             root, clock, peerUid=lambda t: uid,
                                             uidLimit=1, ownUid=4242)
    for _ in range(3):
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        assert transport.value() == b""
    assert factory.byUid == {}


def test_daemonsUidAskedWhenClientsCome(root, monkeypatch):
    """A root-started daemon builds the factory before it takes its account's uid; that
    uid is exempt all the same."""
    clock = task.Clock()
    monkeypatch.setattr(queuesocket.os, "geteuid", lambda: 0)
    factory = queuesocket.QueueSocketFactory(Queue(root, reactor=clock, runBlocking=syncRun),
                                             root, clock, peerUid=lambda t: 4343, uidLimit=1)
    monkeypatch.setattr(queuesocket.os, "geteuid", lambda: 4343)
    for _ in range(3):
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        assert transport.value() == b""
