"""qmail-smtpd's dialogue over StringTransport (spec/smtp.md §1–6), with a fake queue."""

import os

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from qmailtx.control import ControlDir
from qmailtx.results import PermFailure, TempFailure
from qmailtx.smtp import COMMAND_LINE_LIMIT
from qmailtx.smtpfactory import SMTPFactory


class FakeWriter:
    def __init__(self, queue):
        self.queue = queue
        self.qp = 4711
        self.data = []
        self.aborted = False
        self.deferred = None

    def write(self, data):
        self.data.append(data)

    def commit(self, sender, recipients):
        self.envelope = (sender, list(recipients))
        if self.queue.failWith is not None:
            return defer.fail(self.queue.failWith)
        if self.queue.hold:
            self.deferred = defer.Deferred()
            return self.deferred
        return defer.succeed(12345)

    def abort(self):
        self.aborted = True


class FakeQueue:
    def __init__(self):
        self.writers = []
        self.failWith = None
        self.hold = False
        self.refuse = False

    def begin(self, how):
        assert how == b"from network"
        if self.refuse:
            raise self.refuse
        w = FakeWriter(self)
        self.writers.append(w)
        return w


@pytest.fixture
def root(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_bytes(b"mx.example.com\n")
    (control / "rcpthosts").write_bytes(b"example.com\n.example.org\n")
    return tmp_path


class Session:
    def __init__(self, root, env=None, queue=None):
        self.clock = task.Clock()
        self.clock.advance(1732217160)
        self.queue = queue or FakeQueue()
        self.factory = SMTPFactory(ControlDir(str(root / "control")), self.queue, self.clock,
                                   frozenset({b"127.0.0.1"}))
        self.proto = self.factory.buildProtocol(None)
        self.proto.env = {"TCPREMOTEIP": "10.0.0.1", "TCPLOCALIP": "127.0.0.1", "PROTO": "TCP",
                          **(env or {})}
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data):
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()

    def lines(self, data):
        return self.send(data).split(b"\r\n")[:-1]


def test_greeting_and_reference_session(root):
    """The reference session of spec/smtp.md §10, reply for reply."""
    s = Session(root)
    assert s.transport.value() == b"220 mx.example.com ESMTP\r\n"
    assert s.send(b"helo dude\r\n") == b"250 mx.example.com\r\n"
    assert s.send(b"mail <me@example.com>\r\n") == b"250 ok\r\n"
    assert s.send(b"rcpt <me@example.com>\r\n") == b"250 ok\r\n"
    assert s.send(b"data\r\n") == b"354 go ahead\r\n"
    assert s.send(b"Subject: testing\r\n\r\nThis is a test.\r\n.\r\n") == b"250 ok 1732217160 qp 4711\r\n"
    assert s.send(b"quit\r\n") == b"221 mx.example.com\r\n"
    assert s.transport.disconnecting
    w = s.queue.writers[0]
    assert w.envelope == (b"me@example.com", [b"me@example.com"])
    assert b"".join(w.data) == (
        b"Received: from unknown (HELO dude) (10.0.0.1)\n"
        b"  by 127.0.0.1 with SMTP; 21 Nov 2024 19:26:00 -0000\n"
        b"Subject: testing\n\nThis is a test.\n")


def test_smtpgreeting_and_ehlo(root):
    """smtpgreeting replaces me in 220/250/221; EHLO lists PIPELINING, 8BITMIME, SIZE."""
    (root / "control" / "smtpgreeting").write_bytes(b"mx.example.com welcome here\n")
    (root / "control" / "databytes").write_bytes(b"1000\n")
    s = Session(root)
    assert s.transport.value() == b"220 mx.example.com welcome here ESMTP\r\n"
    assert s.lines(b"EHLO x\r\n") == [b"250-mx.example.com welcome here", b"250-PIPELINING",
                                      b"250-8BITMIME", b"250 SIZE 1000"]


def test_unknownOwnAddresses_421(root, monkeypatch):
    """This host's addresses cannot be read: 421 and close at the start, as qmail-smtpd's
    setup; looked up again for the next session, which is served once they can be read."""
    from qmailtx import ipme

    def broken():
        raise OSError(19, "no such device")
    monkeypatch.setattr(ipme, "interfaceAddresses", broken)
    s = Session(root)
    s.factory.ipme = None
    first = StringTransport()
    s.factory.buildProtocol(None).makeConnection(first)
    assert first.value() == b"421 unable to figure out my IP addresses (#4.3.0)\r\n"
    assert first.disconnecting
    monkeypatch.setattr(ipme, "interfaceAddresses", lambda: {b"192.0.2.7"})
    second = StringTransport()
    s.factory.buildProtocol(None).makeConnection(second)
    assert second.value() == b"220 mx.example.com ESMTP\r\n"
    assert b"192.0.2.7" in s.factory.ipme


def test_no_controls_421(tmp_path):
    """Neither smtpgreeting nor me: 421 unable to read controls, then close."""
    (tmp_path / "control").mkdir()
    s = Session(tmp_path)
    assert s.transport.value() == b"421 unable to read controls (#4.3.0)\r\n"
    assert s.transport.disconnecting
    s.proto.connectionLost(None)


@pytest.mark.parametrize("line, reply", [
    (b"RCPT TO:<a@example.com>", b"503 MAIL first (#5.5.1)"),
    (b"DATA", b"503 MAIL first (#5.5.1)"),
    (b"RSET", b"250 flushed"),
    (b"NOOP x", b"250 ok"),
    (b"VRFY joe", b"252 send some mail, i'll try my best"),
    (b"EXPN list", b"502 unimplemented (#5.5.1)"),
    (b"ETRN x", b"502 unimplemented (#5.5.1)"),
    (b"TURN", b"502 unimplemented (#5.5.1)"),
    (b"STARTTLS", b"502 unimplemented (#5.5.1)"),
    (b"", b"502 unimplemented (#5.5.1)"),
    (b"\xff\xfe garbage", b"502 unimplemented (#5.5.1)"),
    (b"HELO", b"250 mx.example.com"),
    (b"MAIL\tFROM:<a@b>", b"502 unimplemented (#5.5.1)"),
])
def test_single_replies(root, line, reply):
    """Replies of spec/smtp.md §3 that need no transaction."""
    s = Session(root)
    assert s.send(line + b"\r\n") == reply + b"\r\n"


def test_help_is_214(root):
    """HELP answers 214 (the project's own text)."""
    assert Session(root).send(b"HELP\r\n").startswith(b"214 ")


def test_verbs_case_insensitive_and_lf_only_commands(root):
    """Verbs match any case; a command line may end in LF alone."""
    s = Session(root)
    assert s.send(b"nOoP\n") == b"250 ok\r\n"


def test_mail_rcpt_data_errors(root):
    """Syntax errors, RCPT first, rcpthosts refusal, and the unusual but legal empty recipient."""
    s = Session(root)
    long = b"a" * 900
    assert s.send(b"MAIL FROM:<" + long + b">\r\n") == b"555 syntax error (#5.5.4)\r\n"
    assert s.send(b"MAIL FROM:<a@b>\r\n") == b"250 ok\r\n"
    assert s.send(b"DATA\r\n") == b"503 RCPT first (#5.5.1)\r\n"
    assert s.send(b"RCPT TO:<" + long + b">\r\n") == b"555 syntax error (#5.5.4)\r\n"
    assert s.send(b"RCPT TO:<x@elsewhere.net>\r\n") == (
        b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n")
    assert s.send(b"RCPT TO:<x@Example.COM>\r\n") == b"250 ok\r\n"
    assert s.send(b"RCPT joe@elsewhere.net\r\n") == b"250 ok\r\n"
    assert s.send(b"RCPT TO:<y@a.example.org>\r\n") == b"250 ok\r\n"


def test_syntax_error_keeps_transaction(root):
    """As in qmail, a MAIL with a syntax error leaves the earlier transaction alone."""
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\n")
    s.send(b"RCPT TO:<x@example.com>\r\n")
    assert s.send(b"MAIL FROM:<" + b"a" * 900 + b">\r\n") == b"555 syntax error (#5.5.4)\r\n"
    assert s.send(b"DATA\r\n") == b"354 go ahead\r\n"


def test_helo_and_rset_end_transaction(root):
    """HELO, EHLO and RSET drop the transaction; MAIL drops earlier RCPTs."""
    for verb in (b"HELO x", b"EHLO x", b"RSET"):
        s = Session(root)
        s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\n")
        s.send(verb + b"\r\n")
        assert s.send(b"DATA\r\n") == b"503 MAIL first (#5.5.1)\r\n"
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nMAIL FROM:<c@d>\r\n")
    assert s.send(b"DATA\r\n") == b"503 RCPT first (#5.5.1)\r\n"


def test_badmailfrom(root):
    """MAIL always 250; each RCPT is refused for a badmailfrom sender."""
    (root / "control" / "badmailfrom").write_bytes(b"@spam.example\n")
    s = Session(root)
    assert s.send(b"MAIL FROM:<x@SPAM.example>\r\n") == b"250 ok\r\n"
    assert s.send(b"RCPT TO:<a@example.com>\r\n") == (
        b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n")


def test_relayclient_appended(root):
    """RELAYCLIENT skips rcpthosts and is appended to each recipient."""
    s = Session(root, {"RELAYCLIENT": "@fixme"})
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"RCPT TO:<joe@elsewhere.net>\r\n") == b"250 ok\r\n"
    s.send(b"DATA\r\n.\r\n")
    assert s.queue.writers[0].envelope[1] == [b"joe@elsewhere.net@fixme"]


def test_relayclient_empty(root):
    """An empty RELAYCLIENT still permits relaying and appends nothing."""
    s = Session(root, {"RELAYCLIENT": ""})
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<joe@elsewhere.net>\r\nDATA\r\n.\r\n")
    assert s.queue.writers[0].envelope[1] == [b"joe@elsewhere.net"]


def test_morercpthosts_only_with_rcpthosts(root):
    """morercpthosts.cdb extends rcpthosts; without rcpthosts everything is allowed anyway."""
    from qmailtx.cdbfile import buildCdb

    c = root / "control"
    buildCdb(str(c / "morercpthosts.cdb"), str(c / "morercpthosts.tmp"), [(b"more.example", b"")])
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"RCPT TO:<x@more.example>\r\n") == b"250 ok\r\n"
    assert s.send(b"RCPT TO:<x@less.example>\r\n").startswith(b"553 ")
    os.unlink(c / "rcpthosts")
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"RCPT TO:<x@less.example>\r\n") == b"250 ok\r\n"


def test_pipelining_replies_in_order(root):
    """A whole pipelined transaction gets every reply, in order, in one batch."""
    s = Session(root)
    out = s.lines(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\n"
                  b"RCPT TO:<y@nope.net>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert out[4:] == [b"250 ok", b"250 ok",
                       b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
                       b"354 go ahead", b"250 ok 1732217160 qp 4711", b"250 ok",
                       b"221 mx.example.com"]


def test_replies_stay_in_order_while_commit_pending(root):
    """Commands pipelined behind the final dot wait for the queue's answer."""
    s = Session(root)
    s.queue.hold = True
    out = s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert out.endswith(b"354 go ahead\r\n")
    s.transport.clear()
    s.queue.writers[0].deferred.callback(7)
    assert s.transport.value() == b"250 ok 1732217160 qp 4711\r\n250 ok\r\n"


@pytest.mark.parametrize("failure, reply", [
    (TempFailure(b"qq write error or disk full (#4.3.0)"), b"451 qq write error or disk full (#4.3.0)"),
    (PermFailure(b"envelope address too long for qq (#5.1.3)"),
     b"554 envelope address too long for qq (#5.1.3)"),
])
def test_queue_failures(root, failure, reply):
    """A queue's D/Z text becomes 554/451 after the dot; the transaction is over."""
    s = Session(root)
    s.queue.failWith = failure
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    assert s.send(b"x\r\n.\r\n") == reply + b"\r\n"
    assert s.send(b"DATA\r\n") == b"503 MAIL first (#5.5.1)\r\n"


def test_qqt_failure(root):
    """The queue cannot be started (qmail-smtpd's pipe or fork failing): 451 qqt failure,
    and a new MAIL is needed."""
    s = Session(root)
    s.queue.refuse = OSError(11, "Resource temporarily unavailable")
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\n")
    assert s.send(b"DATA\r\n") == b"451 qqt failure (#4.3.0)\r\n"
    assert s.send(b"DATA\r\n") == b"503 MAIL first (#5.5.1)\r\n"


def test_queueAnsweringAtItsStartAnswersAfterTheDot(root):
    """A queue that fails with qmail-queue's answer as it starts (a program that cannot be
    executed) takes the message and gives that answer at its end, as qmail-smtpd reports
    the program's exit after the dot."""
    s = Session(root)
    s.queue.refuse = TempFailure(b"unable to exec qq (#4.3.0)")
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\n")
    assert s.send(b"DATA\r\n") == b"354 go ahead\r\n"
    assert s.send(b"RSET\r\n.\r\n") == b"451 unable to exec qq (#4.3.0)\r\n"
    assert s.send(b"DATA\r\n") == b"503 MAIL first (#5.5.1)\r\n"


def test_databytes(root):
    """Exactly databytes is accepted, one more is 552 after the dot; SIZE= refused early."""
    (root / "control" / "databytes").write_bytes(b"10\n")
    s = Session(root)
    assert s.send(b"MAIL FROM:<a@b> SIZE=11\r\n") == (
        b"552 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n")
    s.send(b"MAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    assert s.send(b"123456789\r\n.\r\n") == b"250 ok 1732217160 qp 4711\r\n"
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    assert s.send(b"1234567890\r\n.\r\n") == (
        b"552 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n")
    assert s.queue.writers[1].aborted


def test_DATABYTES_env_overrides(root):
    """DATABYTES from the rules overrides control/databytes; non-numeric means no limit."""
    (root / "control" / "databytes").write_bytes(b"10\n")
    s = Session(root, {"DATABYTES": "5"})
    assert s.lines(b"EHLO x\r\n")[-1] == b"250 SIZE 5"
    s = Session(root, {"DATABYTES": "lots"})
    assert s.lines(b"EHLO x\r\n")[-1] == b"250 SIZE 0"


@pytest.mark.parametrize("value, size", [("12abc", b"12"), ("50 ", b"50"), ("\u00b2", b"0"),
                                         ("", b"0")])
def test_DATABYTES_env_read_as_scan_ulong(root, value, size):
    """DATABYTES is read as qmail-smtpd's scan_ulong reads it: its leading ASCII digits, 0
    (no limit) without any; a digit that is not ASCII is not one (it used to drop the
    session with a traceback)."""
    s = Session(root, {"DATABYTES": value})
    assert s.lines(b"EHLO x\r\n")[-1] == b"250 SIZE " + size


def test_hop_limit(root):
    """100 Received/Delivered lines: 554 too many hops; 99 are fine."""
    for count, reply in ((99, b"250 ok 1732217160 qp 4711"),
                         (100, b"554 too many hops, this message is looping (#5.4.6)")):
        s = Session(root)
        s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
        assert s.send(b"Received: x\r\n" * count + b"\r\nbody\r\n.\r\n") == reply + b"\r\n"


@pytest.mark.parametrize("payload", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\n.\nQUIT\r\n",
                                     b"x\r.\rQUIT\r\n"])
def test_bare_lf_and_cr_close(root, payload):
    """Bare LF or CR in DATA: qmail's 451 and the connection closes; nothing is queued."""
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    assert s.send(payload) == b"451 See https://cr.yp.to/docs/smtplf.html.\r\n"
    assert s.transport.disconnecting
    assert s.queue.writers[0].aborted
    assert s.send(b"QUIT\r\n") == b""


def test_smuggled_command_not_executed(root):
    """A command behind a fake terminator is message text, never a command."""
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    out = s.send(b"x\r\n..\r\nRCPT TO:<evil@example.com>\r\n.\r\n")
    assert out == b"250 ok 1732217160 qp 4711\r\n"
    assert s.queue.writers[0].envelope[1] == [b"x@example.com"]


def test_long_command_line_closes(root):
    """A command line far beyond the address limit: an error reply and a close."""
    s = Session(root)
    assert s.send(b"MAIL FROM:<" + b"a" * (COMMAND_LINE_LIMIT + 10)) == (
        b"500 command line too long (#5.5.2)\r\n")
    assert s.transport.disconnecting


def test_idle_timeout(root):
    """After timeoutsmtpd seconds without input: 451 timeout and close."""
    (root / "control" / "timeoutsmtpd").write_bytes(b"30\n")
    s = Session(root)
    s.clock.advance(20)
    s.send(b"NOOP\r\n")
    s.clock.advance(20)
    assert not s.transport.disconnecting
    s.transport.clear()
    s.clock.advance(11)
    assert s.transport.value() == b"451 timeout (#4.4.2)\r\n"
    assert s.transport.disconnecting


def test_timeoutsmtpd_zero_means_one(root):
    """timeoutsmtpd <= 0 becomes 1 second."""
    (root / "control" / "timeoutsmtpd").write_bytes(b"0\n")
    s = Session(root)
    s.clock.advance(2)
    assert s.transport.disconnecting


def test_connection_lost_mid_data_aborts(root):
    """A client vanishing during DATA leaves nothing queued."""
    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\npartial")
    s.proto.connectionLost(None)
    assert s.queue.writers[0].aborted


def test_thousands_of_rcpts(root):
    """Thousands of RCPTs each get a reply; past the recipient limit a temporary 452."""
    from qmailtx.smtp import RECIPIENT_LIMIT

    s = Session(root)
    s.send(b"MAIL FROM:<a@b>\r\n")
    out = s.send(b"RCPT TO:<x@example.com>\r\n" * 5000)
    assert out.count(b"250 ok\r\n") == RECIPIENT_LIMIT
    assert out.count(b"452 too many recipients (#4.5.3)\r\n") == 5000 - RECIPIENT_LIMIT
    assert len(s.proto.recipients) == RECIPIENT_LIMIT


def test_output_backpressure_outlasts_a_commit(root):
    """A client not reading its replies stays paused after the commit ends."""
    s = Session(root)
    s.queue.hold = True
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nhi\r\n.\r\n")
    s.proto.pauseProducing()
    assert s.transport.producerState == "paused"
    s.queue.writers[0].deferred.callback(7)
    assert s.transport.producerState == "paused"
    s.proto.resumeProducing()
    assert s.transport.producerState == "producing"


def test_commandEndsAtNul(root):
    """A command is read as qmail-smtpd reads it, as a C string ending at its first NUL: a
    NUL never reaches an address (which the queue would refuse at DATA, for ever)."""
    s = Session(root)
    assert s.send(b"NOOP\0x\r\n") == b"250 ok\r\n"
    s.send(b"MAIL FROM:<a@b.example>\0junk\r\nRCPT TO:<x@example.com>\0<y@example.com>\r\n"
           b"DATA\r\n")
    assert s.send(b"hi\r\n.\r\n") == b"250 ok 1732217160 qp 4711\r\n"
    assert s.queue.writers[0].envelope == (b"a@b.example", [b"x@example.com"])
