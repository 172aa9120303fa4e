"""
The QMTP client (spec/qmqp-qmtp.md §3) over a StringTransport: each recipient is reported
from its own response, and only a missing or garbled response is the #4.4.2 deferral,
marked "Possible duplicate!" once the whole package was sent.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from qmailtx import qmtpclient
from qmailtx.remote import combine
from qmailtx.results import Delivered, PermFailure, TempFailure

DIED = b"Connected to 1.2.3.4 but connection died. (#4.4.2)\n"
DUPLICATE = b"Connected to 1.2.3.4 but connection died. Possible duplicate! (#4.4.2)\n"


def session(tmp_path, recipients, replies, close=True):
    """Send one package for C{recipients}, feed C{replies}, maybe close; the results."""
    path = tmp_path / "mess"
    path.write_bytes(b"Subject: x\n\nbody\n")
    client = qmtpclient.QMTPClient(1200, Clock())
    transport = StringTransport(peerAddress=IPv4Address("TCP", "1.2.3.4", 209))
    client.makeConnection(transport)
    done = []
    qmtpclient.deliver(client, b"s@y.org", list(recipients), str(path)).addBoth(done.append)
    client.dataReceived(replies)
    if close:
        client.connectionLost(Failure(ConnectionDone()))
    assert done, "no attempt"
    attempt = done[0]
    return [combine(r, attempt.message) for r in attempt.recipients]


def test_allResponses(tmp_path):
    """K, Z and D responses: delivered, temporary and permanent, each with its own text."""
    results = session(tmp_path, [b"a@x.org", b"b@x.org", b"c@x.org"],
                      b"7:Kok 1 2,8:Zlater x,6:Dno no,")
    assert results[0] == Delivered(b"ok 1 2")
    assert results[1] == TempFailure(b"later x\n")
    assert results[2] == PermFailure(b"no no\n")


def test_closedAfterSomeResponses(tmp_path):
    """
    The server answers K for the first recipient and hangs up: that recipient is
    delivered (not sent again), the unanswered one is a possible duplicate.
    """
    results = session(tmp_path, [b"a@x.org", b"b@x.org"], b"7:Kok 1 2,")
    assert results == [Delivered(b"ok 1 2"), TempFailure(DUPLICATE)]


def test_closedAfterRefusal(tmp_path):
    """A D then a hang-up: the refused recipient fails for good, the other is deferred."""
    results = session(tmp_path, [b"a@x.org", b"b@x.org"], b"6:Dno no,")
    assert results == [PermFailure(b"no no\n"), TempFailure(DUPLICATE)]


def test_garbledAfterSomeResponses(tmp_path):
    """A response without K, Z or D after a K: the K stands, the rest is deferred."""
    results = session(tmp_path, [b"a@x.org", b"b@x.org", b"c@x.org"],
                      b"7:Kok 1 2,3:?xx,3:Kok,", close=False)
    assert results == [Delivered(b"ok 1 2"), TempFailure(DUPLICATE), TempFailure(DUPLICATE)]


def test_noResponse(tmp_path):
    """The whole package sent and no response at all: every recipient a possible duplicate."""
    results = session(tmp_path, [b"a@x.org", b"b@x.org"], b"")
    assert results == [TempFailure(DUPLICATE)] * 2


def test_diedBeforePackageSent(tmp_path):
    """The connection lost before the package was written out is a plain #4.4.2 deferral."""
    path = tmp_path / "mess"
    path.write_bytes(b"Subject: x\n\nbody\n")
    client = qmtpclient.QMTPClient(1200, Clock())
    transport = StringTransport(peerAddress=IPv4Address("TCP", "1.2.3.4", 209))
    client.makeConnection(transport)
    client.connectionLost(Failure(ConnectionDone()))
    done = []
    qmtpclient.deliver(client, b"s@y.org", [b"a@x.org"], str(path)).addBoth(done.append)
    assert [combine(r, done[0].message) for r in done[0].recipients] == [TempFailure(DIED)]
