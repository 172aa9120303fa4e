"""
The listeners' null-client queue (L{qmailtx.nullclient}) against qmailtx's own QMQP server
and hand-made peers, over iosim connections on a memory reactor: what is sent, how
qmail-qmqpc's outcomes become the writer's failures, and the failover rules.
"""

import pytest
from twisted.internet import error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter

from qmailtx import nullclient, qmqp
from qmailtx.control import ControlError
from qmailtx.results import PermFailure, TempFailure
from tests.protocol.packagefakes import FakeControls, FakeQueue

PORT = 628


def setUp(servers=(b"127.0.0.3",), serverFactory=None, **kw):
    reactor = MemoryReactorClock()
    hub = FakeQueue()
    if serverFactory is None:
        serverFactory = qmqp.QMQPFactory(hub, reactor=reactor)
    reactor.listenTCP(PORT, serverFactory)
    controls = FakeControls(qmqpservers=None if servers is None else list(servers))
    queue = nullclient.QmqpQueue(controls, reactor, port=PORT, **kw)
    return queue, hub, reactor, ConnectionCompleter(reactor)


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the commit has not finished"
    return out[0]


def send(queue, message=b"Subject: hi\n\nnull\n", sender=b"me@client.example",
         recipients=(b"you@hub.example",)):
    writer = queue.begin(b"from network")
    for i in range(0, len(message), 1000):
        writer.write(message[i:i + 1000])
    return writer, writer.commit(sender, list(recipients))


def test_messageReachesServerWithItsQp():
    """A committed message reaches the QMQP server byte for byte with no Received line of
    the null client's own; the commit succeeds and the writer takes the server's qp."""
    queue, hub, reactor, completer = setUp()
    writer, d = send(queue)
    assert reactor.tcpClients[0][:2] == ("127.0.0.3", PORT)
    completer.succeedOnce().flush()
    assert result(d) is None
    [w] = hub.committed
    assert w.data.endswith(b"\nSubject: hi\n\nnull\n")
    assert w.data.startswith(b"Received: from unknown (unknown)\n  by unknown with QMQP; ")
    assert w.data.count(b"Received:") == 1
    assert (w.sender, w.recipients) == (b"me@client.example", [b"you@hub.example"])
    assert writer.qp == 4711


def test_largeMessageSpooledToFile():
    """A message longer than the memory spool goes through a temporary file and arrives
    whole, with every recipient in order."""
    queue, hub, reactor, completer = setUp()
    message = b"".join(b"line %07d\n" % i for i in range(3 * nullclient.MEMORY_LIMIT // 13))
    assert len(message) > nullclient.MEMORY_LIMIT
    writer, d = send(queue, message, recipients=[b"a@x", b"b@y", b"c@z"])
    assert writer._spool._rolled
    completer.succeedOnce().flush()
    assert result(d) is None
    [w] = hub.committed
    assert w.data.endswith(message)
    assert w.recipients == [b"a@x", b"b@y", b"c@z"]


@pytest.mark.parametrize("failure, expected", [
    (TempFailure(b"qq write error or disk full (#4.3.0)"),
     TempFailure(b"mail server temporarily rejected message (#4.3.0)")),
    (PermFailure(b"message too big (#5.3.4)"),
     PermFailure(b"mail server permanently rejected message (#5.3.0)")),
])
def test_serverRefusalMapsToQmqpcTexts(failure, expected):
    """A Z or D reply fails the commit as qmail-qmqpc's exit 71 or 31 reads through
    qmail.c: temporary or permanent, in qmail's words."""
    queue, hub, reactor, completer = setUp()
    hub.results.append(failure)
    writer, d = send(queue)
    completer.succeedOnce().flush()
    got = result(d)
    assert isinstance(got, Failure) and got.value == expected


def test_failoverAfterRefusedAndTimedOut():
    """Refused and timed-out connections move on to the next server; the first that
    connects takes the message."""
    queue, hub, reactor, completer = setUp([b"127.0.0.5", b"127.0.0.6", b"127.0.0.7"])
    writer, d = send(queue)
    completer.failOnce(Failure(error.ConnectionRefusedError()))
    completer.failOnce(Failure(error.TimeoutError()))
    assert reactor.tcpClients[0][0] == "127.0.0.7"
    completer.succeedOnce().flush()
    assert result(d) is None
    assert len(hub.committed) == 1


@pytest.mark.parametrize("errors, expected", [
    ([error.TimeoutError(), error.ConnectionRefusedError()],
     b"connection to mail server rejected (#4.4.1)"),
    ([error.ConnectionRefusedError(), error.TimeoutError()],
     b"connection to mail server timed out (#4.4.1)"),
])
def test_allServersUnreachable(errors, expected):
    """When no server accepts a connection, the last one's error decides (73 refused,
    72 timed out), a temporary failure."""
    queue, hub, reactor, completer = setUp([b"127.0.0.5", b"127.0.0.6"])
    writer, d = send(queue)
    for e in errors:
        completer.failOnce(Failure(e))
    got = result(d)
    assert got.value == TempFailure(expected)
    assert hub.committed == []


class Hangup(Protocol):
    def dataReceived(self, data):
        self.transport.loseConnection()


class Silent(Protocol):
    pass


def test_brokenConnectionIsFinal():
    """Once connected, a connection lost before any K/Z/D is exit 74 and no further
    server is tried (the message may have been queued there)."""
    queue, hub, reactor, completer = setUp([b"127.0.0.5", b"127.0.0.6"],
                                           Factory.forProtocol(Hangup))
    writer, d = send(queue)
    completer.succeedOnce().flush()
    got = result(d)
    assert got.value == TempFailure(b"communication with mail server failed (#4.4.2)")
    assert reactor.tcpClients == []


def test_silentServerTimesOut():
    """A server that never answers is given up after qmail-qmqpc's 60 seconds: exit 74."""
    queue, hub, reactor, completer = setUp(serverFactory=Factory.forProtocol(Silent))
    writer, d = send(queue)
    pump = completer.succeedOnce()
    pump.flush()
    reactor.advance(59)
    pump.flush()
    assert not d.called
    reactor.advance(1)
    pump.flush()
    assert result(d).value == TempFailure(b"communication with mail server failed (#4.4.2)")


@pytest.mark.parametrize("servers", [None, [], [b"hub.example", b"::1"]])
def test_noServersIsConfigurationTrouble(servers):
    """No qmqpservers file, or no dotted-decimal line in it: exit 55, temporary, and
    no connection attempted."""
    queue, hub, reactor, completer = setUp(servers)
    writer, d = send(queue)
    assert result(d).value == TempFailure(b"qq unable to read configuration (#4.3.0)")
    assert reactor.tcpClients == []


def test_unreadableServersIsConfigurationTrouble():
    """An unreadable qmqpservers is exit 55 as well."""
    queue, hub, reactor, completer = setUp()
    queue.controls.error = ControlError("qmqpservers: permission denied")
    writer, d = send(queue)
    assert result(d).value == TempFailure(b"qq unable to read configuration (#4.3.0)")


def test_abortSendsNothing():
    """An aborted writer (a refused DATA, a dropped client) never connects."""
    queue, hub, reactor, completer = setUp()
    writer = queue.begin(b"from network")
    writer.write(b"partial")
    writer.abort()
    assert reactor.tcpClients == []
    assert isinstance(result(writer.commit(b"", [b"x@y"])).value, TempFailure)


def test_serverQp():
    """The qp of a K reply, when there is one."""
    assert nullclient.serverQp(b"Kok 1732217160 qp 4711") == 4711
    assert nullclient.serverQp(b"Kthanks") is None
    assert nullclient.serverQp(b"Kok qp x") is None
