"""
The SMTP client dialogue against scripted servers over iosim: every report text of
spec/remote.md §4, pipelining, SIZE, EHLO/HELO fallback, AUTH refusal without TLS,
timeouts, and RSET for reuse.
"""

import io
import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect

from qmailtx import smtpclient, smtpdialogue
from qmailtx.smtpclient import ReplyParser, SMTPClient
from qmailtx.smtpdialogue import Credentials
from tests.protocol.smtpfakes import ScriptedServer

IP = b"1.2.3.4"


class Session:
    def __init__(self, script=None, timeout=1200):
        self.clock = Clock()
        self.server = ScriptedServer(script)
        self.client = SMTPClient(timeout, self.clock)
        self.pump = connect(
            self.server, FakeTransport(self.server, isServer=True),
            self.client, FakeTransport(self.client, isServer=False,
                                       peerAddress=IPv4Address("TCP", "1.2.3.4", 25)),
            clock=self.clock)

    def run(self, d):
        results = []
        d.addBoth(results.append)
        self.pump.flush()
        assert results, "dialogue did not finish"
        return results[0]

    def deliver(self, message=b"Subject: x\n\nbody\n", recipients=(b"a@x.org",),
                helohost=b"me.example", credentials=None, sender=b"s@y.org"):
        opened = self.run(smtpdialogue.openSession(self.client, helohost, None, credentials))
        if isinstance(opened, smtpdialogue.Failed) or hasattr(opened, "value"):
            value = getattr(opened, "value", opened)
            assert isinstance(value, smtpdialogue.Failed), opened
            return smtpdialogue.Attempt([None] * len(recipients), value.report)
        return self.run(smtpdialogue.transaction(
            self.client, sender, list(recipients), io.BytesIO(message), len(message)))


def test_success():
    """A 250 after the dot: C{K} with qmail-remote's text and the server's reply."""
    s = Session()
    a = s.deliver()
    assert a.recipients == [b"r"]
    assert a.message == b"K1.2.3.4 accepted message.\nRemote host said: 250 ok 1732217160 qp 99\n"
    assert s.server.messages == [b"Subject: x\r\n\r\nbody\r\n"]


def test_greetingFailed():
    """Any greeting but 220, even 5xx, is a deferral."""
    a = Session({"greeting": b"554 go away\r\n"}).deliver()
    assert a.message == b"ZConnected to 1.2.3.4 but greeting failed.\nRemote host said: 554 go away\n"


def test_nameRejected():
    """EHLO refused, then HELO refused: 'my name was rejected' with the HELO reply."""
    s = Session({"EHLO": b"500 what\r\n", "HELO": b"553 bad name\r\n"})
    a = s.deliver()
    assert a.message == (b"ZConnected to 1.2.3.4 but my name was rejected.\n"
                         b"Remote host said: 553 bad name\n")


def test_heloFallback():
    """A server refusing EHLO gets HELO, and mail goes through without pipelining."""
    s = Session({"EHLO": b"502 no\r\n"})
    a = s.deliver()
    assert a.message.startswith(b"K")
    assert s.server.lines[:3] == [b"EHLO me.example", b"HELO me.example", b"MAIL FROM:<s@y.org>"]


@pytest.mark.parametrize("code,letter", [(b"553", b"D"), (b"451", b"Z")])
def test_senderRejected(code, letter):
    """MAIL >= 500 is permanent, >= 400 temporary; no recipient reports."""
    a = Session({"MAIL": code + b" no thanks\r\n"}).deliver()
    assert a.recipients == [None]
    assert a.message == (letter + b"Connected to 1.2.3.4 but sender was rejected.\n"
                         b"Remote host said: " + code + b" no thanks\n")


def test_recipientReports():
    """RCPT 550 => h, 450 => s, 250 => r, each with the reply to that RCPT."""
    s = Session({"RCPT": [b"550 no such user\r\n", b"450 try later\r\n", b"250 ok\r\n"]})
    a = s.deliver(recipients=[b"a@x", b"b@x", b"c@x"])
    assert a.recipients == [
        b"h1.2.3.4 does not like recipient.\nRemote host said: 550 no such user\n",
        b"s1.2.3.4 does not like recipient.\nRemote host said: 450 try later\n",
        b"r"]
    assert a.message.startswith(b"K1.2.3.4 accepted message.")
    assert len(s.server.messages) == 1


def test_givingUp():
    """No recipient accepted: 'Giving up on IP.' with no Remote host said line; no data sent."""
    s = Session({"RCPT": b"550 no\r\n", "DATA": b"503 no recipients\r\n"})
    a = s.deliver(recipients=[b"a@x", b"b@x"])
    assert a.message == b"DGiving up on 1.2.3.4.\n"
    assert s.server.messages == []


@pytest.mark.parametrize("code,letter", [(b"554", b"D"), (b"451", b"Z")])
def test_dataRejected(code, letter):
    """DATA refused: 'failed on DATA command'."""
    s = Session({"EHLO": b"250 fake\r\n", "DATA": code + b" not now\r\n"})
    a = s.deliver()
    assert a.message == (letter + b"1.2.3.4 failed on DATA command.\n"
                         b"Remote host said: " + code + b" not now\n")


@pytest.mark.parametrize("code,letter", [(b"554", b"D"), (b"452", b"Z")])
def test_afterMessage(code, letter):
    """The reply after the dot decides: 'failed after I sent the message'."""
    a = Session({"dot": code + b" spam\r\n"}).deliver()
    assert a.message == (letter + b"1.2.3.4 failed after I sent the message.\n"
                         b"Remote host said: " + code + b" spam\n")


def test_droppedAfterDot():
    """The server hangs up after the final dot: a deferral marked 'Possible duplicate!'."""
    a = Session({"dot": None}).deliver()
    assert a.recipients == [b"r"]
    assert a.message == (b"ZConnected to 1.2.3.4 but connection died. "
                         b"Possible duplicate! (#4.4.2)\n")


def test_droppedBeforeData():
    """A hang-up during the dialogue before the dot: 'connection died' without the warning."""
    a = Session({"RCPT": None}).deliver()
    assert a.message == b"ZConnected to 1.2.3.4 but connection died. (#4.4.2)\n"


def test_droppedAtGreeting():
    """A hang-up instead of a greeting is 'connection died' too."""
    a = Session({"greeting": None}).deliver()
    assert a.message == b"ZConnected to 1.2.3.4 but connection died. (#4.4.2)\n"


def test_timeout():
    """No reply within timeoutremote: the connection is dropped and the delivery deferred."""
    s = Session({"MAIL": b""}, timeout=30)
    s.run(smtpdialogue.openSession(s.client, b"me", None, None))
    results = []
    smtpdialogue.transaction(s.client, b"s@y", [b"a@x"], io.BytesIO(b"x\n"), 2).addBoth(
        results.append)
    s.pump.flush()
    assert not results
    s.clock.advance(31)
    s.pump.flush()
    assert results[0].message == b"ZConnected to 1.2.3.4 but connection died. (#4.4.2)\n"


def test_partialFinalLine():
    """A partial final line is refused and the data is not ended with a dot."""
    s = Session()
    a = s.deliver(message=b"no newline")
    assert a.message == b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"
    assert s.server.messages == []


def test_pipelinedOneWrite():
    """With PIPELINING, MAIL, every RCPT and DATA leave in one write, with SIZE."""
    s = Session()
    s.run(smtpdialogue.openSession(s.client, b"me", None, None))
    writes = []
    original = s.client.transport.write
    s.client.transport.write = lambda data: (writes.append(data), original(data))
    s.run(smtpdialogue.transaction(s.client, b"s@y", [b"a@x", b"b@x"], io.BytesIO(b"hi\n"), 3))
    assert writes[0] == (b"MAIL FROM:<s@y> SIZE=3\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n"
                         b"DATA\r\n")


def test_multilineAndNulText():
    """A multi-line reply is kept line by line; NUL bytes show as '?'."""
    a = Session({"dot": b"250-first\r\n250 sec\0nd\r\n"}).deliver()
    assert a.message.endswith(b"Remote host said: 250-first\n250 sec?nd\n")


def test_resetBeforeNextTransaction():
    """A second transaction on a connection starts with RSET, pipelined with MAIL."""
    s = Session()
    s.deliver()
    assert b"RSET" not in s.server.lines
    a = s.run(smtpdialogue.transaction(s.client, b"s@y", [b"b@x"], io.BytesIO(b"2\n"), 2))
    assert a.message.startswith(b"K") and len(s.server.messages) == 2
    assert s.server.lines[-4:] == [b"RSET", b"MAIL FROM:<s@y> SIZE=2", b"RCPT TO:<b@x>", b"DATA"]


def test_resetWithoutPipelining():
    """Without PIPELINING the RSET is its own round trip before MAIL."""
    s = Session({"EHLO": b"250 fake\r\n"})
    s.deliver()
    a = s.run(smtpdialogue.transaction(s.client, b"s@y", [b"b@x"], io.BytesIO(b"2\n"), 2))
    assert a.message.startswith(b"K")
    assert s.server.lines[-4:-2] == [b"RSET", b"MAIL FROM:<s@y>"]


def test_authNeedsTLS():
    """A route password is never sent in the clear: deferral, no AUTH command."""
    s = Session({"EHLO": b"250-fake\r\n250 AUTH PLAIN LOGIN\r\n"})
    a = s.deliver(credentials=Credentials(b"u", b"p"))
    assert a.message == (b"ZConnected to 1.2.3.4 but TLS is not in use, so I will not send"
                         b" my password. (#4.7.0)\n")
    assert not any(l.startswith(b"AUTH") for l in s.server.lines)


@pytest.mark.parametrize("mechanisms,expected", [
    (b"PLAIN LOGIN", [b"AUTH PLAIN AHUAcA=="]),
    (b"LOGIN", [b"AUTH LOGIN", b"dQ==", b"cA=="]),
])
def test_authOverTLS(mechanisms, expected):
    """On a secure session AUTH PLAIN is preferred, LOGIN is the fallback."""
    s = Session({"EHLO": b"250-fake\r\n250 AUTH " + mechanisms + b"\r\n",
                 "AUTH": [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"235 ok\r\n"]
                 if b"PLAIN" not in mechanisms else b"235 ok\r\n",
                 "DQ==": b"334 UGFzc3dvcmQ6\r\n", "CA==": b"235 ok\r\n"})
    s.client.secure = True
    s.run(smtpdialogue.openSession(s.client, b"me", None, Credentials(b"u", b"p")))
    assert [l for l in s.server.lines if l not in (b"EHLO me",)] == expected


def test_replyParser():
    """qmail's smtpcode(): code from the first line, '-' continues, CRs dropped, 5000 kept."""
    p = ReplyParser()
    replies = list(p.feed(b"250-a\r\n250-b\r\n250 c\r\n"))
    assert replies == [smtpclient.Reply(250, b"250-a\n250-b\n250 c\n")]
    replies = list(p.feed(b"5"))
    replies += list(p.feed(b"50 " + b"x" * 6000 + b"\r\n"))
    assert replies[0].code == 550 and len(replies[0].text) == 5000
    assert list(p.feed(b"abc\n"))[0].code >= 500
    assert list(p.feed(b"354\n"))[0] == smtpclient.Reply(354, b"354\n")


@pytest.mark.parametrize("seed", range(20))
def test_replyParserSplitsChangeNothing(seed):
    """
    Whole lines in one read (taken a line at a time) and lines split anywhere (taken a byte
    at a time) give the same replies: codes from odd first bytes, a newline inside the code,
    CRs, continuation lines, over-long text.
    """
    rng = random.Random(seed)
    pieces = [b"250-a\r\n999 b\r\n", b"354\n", b"5\n0 odd\n", b"abc\r\n", b"421-x\n421 y\r\n",
              b"250 " + b"z" * 6000 + b"\r\n", b"25\r\n", b"\n\n\n\n", b"550-\n550 \r\r\n"]
    data = b"".join(rng.choice(pieces) for _ in range(30))
    whole = list(ReplyParser().feed(data))
    parser, split, i = ReplyParser(), [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        split += list(parser.feed(data[i:i + n]))
        i += n
    bytewise = ReplyParser()
    single = [r for k in range(len(data)) for r in bytewise.feed(data[k:k + 1])]
    assert whole == split == single and whole
    assert all(r.code != 999 for r in whole)
