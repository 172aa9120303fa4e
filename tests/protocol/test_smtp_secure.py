"""
STARTTLS, SMTPS and AUTH in the SMTP dialogue (spec/smtp.md §7–8) over StringTransport, with
a fake checkpassword and a task.Clock for the delayed 535.
"""

import base64

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from qmailtx import checkpassword, smtpauth, smtpsecure
from qmailtx.control import ControlDir
from qmailtx.results import TempFailure
from qmailtx.smtpfactory import SMTPFactory
from qmailtx.tls import ServerTLS, selfSignedPEM
from tests.protocol.test_smtp import FakeQueue, Session, root  # noqa: F401 (fixture)


def b64(data):
    return base64.b64encode(data)


class TLSTransport(StringTransport):
    """A StringTransport that records startTLS and what was written before it."""

    tlsCreator = None

    def startTLS(self, creator):
        assert self.producer is not None, "the protocol stays the transport's producer"
        self.tlsCreator = creator
        self.beforeTLS = self.value()


class Checker:
    """checkPassword's signature; users maps login to password, or to an exception."""

    def __init__(self, users):
        self.users = users
        self.calls = []
        self.pending = None
        self.cancelled = []

    def __call__(self, reactor, program, login, password, challenge, timeout, env):
        self.calls.append((program, login, password, challenge, env))
        outcome = self.users.get(login)
        if outcome == "hold":
            self.pending = defer.Deferred(lambda d: self.cancelled.append(login))
            return self.pending
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        if outcome != password:
            return defer.fail(checkpassword.Refused(checkpassword.AUTH_FAILED, 1))
        return defer.succeed(checkpassword.Authenticated(login, b"/home/x", 1000, 1000))


class SecureSession(Session):
    """A Session whose transport can start TLS and whose factory has a fake checker."""

    def __init__(self, root, env=None, tls=True, users=None, defaultEnv=None):
        if tls and not (root / "control" / "servercert.pem").exists():
            (root / "control" / "servercert.pem").write_bytes(selfSignedPEM(b"mx.example.com"))
        self.clock = task.Clock()
        self.clock.advance(1732217160)
        self.queue = FakeQueue()
        self.factory = SMTPFactory(ControlDir(str(root / "control")), self.queue, self.clock,
                                   frozenset({b"127.0.0.1"}))
        self.checker = Checker(users if users is not None else {b"joe": b"secret"})
        self.factory.checkpassword = [b"/bin/checkpassword"]
        self.factory.checker = self.checker
        if defaultEnv:
            self.factory.defaultEnv = defaultEnv
        self.proto = self.factory.buildProtocol(None)
        self.proto.env = {"TCPREMOTEIP": "10.0.0.1", "TCPLOCALIP": "127.0.0.1", "PROTO": "TCP",
                          **(env or {})}
        self.transport = TLSTransport()
        self.proto.makeConnection(self.transport)


AUTH_ENV = {"SMTPAUTH": ""}


def test_ehlo_lists_starttls_after_greeting(root):
    """With servercert.pem, EHLO lists STARTTLS directly after the greeting line."""
    s = SecureSession(root)
    lines = s.lines(b"EHLO x\r\n")
    assert lines[:2] == [b"250-mx.example.com", b"250-STARTTLS"]
    assert not any(line.startswith(b"250-AUTH") for line in lines)


def test_no_certificate_no_starttls(root):
    """Without servercert.pem: no STARTTLS in EHLO, and STARTTLS is 502."""
    s = SecureSession(root, tls=False)
    assert b"250-STARTTLS" not in s.lines(b"EHLO x\r\n")
    assert s.lines(b"STARTTLS\r\n") == [b"502 unimplemented (#5.5.1)"]


def test_starttls_with_argument(root):
    """STARTTLS with an argument is 501 and TLS does not start."""
    s = SecureSession(root)
    assert s.lines(b"STARTTLS now\r\n") == [b"501 Syntax error (no parameters allowed) (#5.5.4)"]
    assert s.transport.tlsCreator is None


def test_starttls_discards_pipelined_plaintext_and_resets(root):
    """
    The injection test: 'STARTTLS\\r\\nRCPT TO:...' in one packet gets only 220; the RCPT is
    never acted on; HELO and the transaction from plaintext are forgotten.
    """
    s = SecureSession(root)
    s.lines(b"EHLO evil\r\nMAIL FROM:<a@example.com>\r\n")
    out = s.send(b"STARTTLS\r\nRCPT TO:<joe@example.com>\r\nDATA\r\n")
    assert out == b"220 ready for tls\r\n"
    assert isinstance(s.transport.tlsCreator, ServerTLS)
    assert s.transport.beforeTLS == b"220 ready for tls\r\n"
    assert s.proto.tlsActive and s.proto.helo is None and s.proto.sender is None
    assert s.lines(b"RCPT TO:<joe@example.com>\r\n") == [b"503 MAIL first (#5.5.1)"]
    lines = s.lines(b"EHLO x\r\n")
    assert b"250-STARTTLS" not in lines
    assert s.lines(b"STARTTLS\r\n") == [b"502 unimplemented (#5.5.1)"]


def test_received_says_esmtps(root):
    """A message after STARTTLS has PROTO ESMTPS, and HELO only from after the switch."""
    s = SecureSession(root)
    s.send(b"HELO before\r\nSTARTTLS\r\n")
    s.send(b"HELO after\r\nMAIL FROM:<a@b>\r\nRCPT TO:<joe@example.com>\r\nDATA\r\n")
    s.send(b"x\r\n.\r\n")
    data = b"".join(s.queue.writers[0].data)
    assert data.startswith(b"Received: from unknown (HELO after) (10.0.0.1)\n"
                           b"  by 127.0.0.1 with ESMTPS; ")


def test_tls_setup_failure_454(root, qmailLines):
    """A servercert.pem that cannot be used: 454 TLS <reason>, and the session goes on; the
    log says why (without it, submission that needs TLS fails with no trace)."""
    (root / "control" / "servercert.pem").write_bytes(b"not a certificate\n")
    s = SecureSession(root)
    lines = s.lines(b"STARTTLS\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"454 TLS ") and lines[0].endswith(b"(#4.3.0)")
    reason = lines[0][len(b"454 TLS "):-len(b" (#4.3.0)")].decode()
    assert qmailLines == [f"warning: smtp: STARTTLS refused, 454: {reason}"]
    assert s.lines(b"NOOP\r\n") == [b"250 ok"]
    assert s.lines(b"STARTTLS\r\n") == lines
    assert SecureSession(root).lines(b"STARTTLS\r\n") == lines


def test_cipher_list_from_env(root):
    """TLSCIPHERS selecting no cipher is a set-up failure (454), proving it is used."""
    s = SecureSession(root, env={"TLSCIPHERS": "NOSUCHCIPHER"})
    assert s.lines(b"STARTTLS\r\n")[0].startswith(b"454 TLS ")


def test_cipher_list_from_control(root):
    """control/tlsserverciphers is the cipher list when TLSCIPHERS is unset."""
    (root / "control" / "tlsserverciphers").write_bytes(b"NOSUCHCIPHER\n")
    s = SecureSession(root)
    assert s.lines(b"STARTTLS\r\n")[0].startswith(b"454 TLS ")


def test_smtps_starts_tls_before_banner(root):
    """
    Env SMTPS: TLS starts before anything is written, and the banner waits for the end of
    the handshake (a write during it would make the TLS layer pause our reading).
    """
    s = SecureSession(root, env={"SMTPS": "1"})
    assert s.transport.tlsCreator is not None
    assert s.transport.beforeTLS == b""
    assert s.transport.value() == b""
    assert s.transport.producer is not None and not s.transport.producerState == "paused"
    s.proto.handshakeCompleted()
    assert s.transport.value() == b"220 mx.example.com ESMTP\r\n"
    assert s.proto.tlsActive


@pytest.mark.parametrize("env, start", [({"SMTPS": "1"}, b""), ({}, b"STARTTLS\r\n")])
def test_stalled_handshake_is_aborted(root, env, start):
    """A client that never completes the handshake is cut off after HANDSHAKE_TIMEOUT."""
    s = SecureSession(root, env=env)
    s.send(start)
    s.clock.advance(smtpsecure.HANDSHAKE_TIMEOUT - 1)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting


def test_completed_handshake_cancels_timer(root):
    """After the handshake the session lives on past HANDSHAKE_TIMEOUT."""
    s = SecureSession(root)
    s.send(b"STARTTLS\r\n")
    s.proto.handshakeCompleted()
    s.clock.advance(smtpsecure.HANDSHAKE_TIMEOUT + 1)
    assert not s.transport.disconnecting
    assert s.lines(b"NOOP\r\n") == [b"250 ok"]


def test_smtps_without_certificate_drops(root):
    """Env SMTPS without a certificate: the connection closes without a banner."""
    s = SecureSession(root, env={"SMTPS": "1"}, tls=False)
    assert s.transport.value() == b""
    assert s.transport.disconnecting


def test_auth_not_available(root):
    """SMTPAUTH unset: AUTH is 503 auth not available, EHLO has no AUTH line."""
    s = SecureSession(root, env={"SMTPS": "1"})
    assert not any(x.startswith(b"250-AUTH") for x in s.lines(b"EHLO x\r\n"))
    assert s.lines(b"AUTH PLAIN\r\n") == [b"503 auth not available (#5.3.3)"]


def test_auth_needs_tls_by_default(root):
    """Before TLS, AUTH is neither advertised nor accepted: 538."""
    s = SecureSession(root, env=AUTH_ENV)
    assert not any(x.startswith(b"250-AUTH") for x in s.lines(b"EHLO x\r\n"))
    assert s.lines(b"AUTH PLAIN\r\n") == [b"538 auth not available without TLS (#5.3.3)"]


def plainLogin(s, user=b"joe", password=b"secret"):
    return s.lines(b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + password) + b"\r\n")


def test_auth_after_starttls_relays_and_marks_received(root):
    """
    After STARTTLS, AUTH PLAIN succeeds with 235; relaying is allowed; the Received line
    shows (user@IP) and ESMTPSA; the queue program env gets RELAYCLIENT and TCPREMOTEINFO.
    """
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    assert b"250-AUTH LOGIN PLAIN" in s.lines(b"EHLO x\r\n")
    assert plainLogin(s) == [b"235 ok, go ahead (#2.0.0)"]
    program, login, password, challenge, env = s.checker.calls[0]
    assert (program, login, password, challenge) == ([b"/bin/checkpassword"], b"joe",
                                                     b"secret", b"")
    assert env[b"TCPREMOTEIP"] == b"10.0.0.1"
    out = s.lines(b"MAIL FROM:<joe@example.com>\r\nRCPT TO:<x@elsewhere.net>\r\nDATA\r\n")
    assert out == [b"250 ok", b"250 ok", b"354 go ahead"]
    s.send(b"hi\r\n.\r\n")
    data = b"".join(s.queue.writers[0].data)
    assert data.startswith(b"Received: from unknown (HELO x) (joe@10.0.0.1)\n"
                           b"  by 127.0.0.1 with ESMTPSA; ")
    assert s.queue.writers[0].envelope == (b"joe@example.com", [b"x@elsewhere.net"])
    assert s.proto.env["RELAYCLIENT"] == "" and s.proto.env["TCPREMOTEINFO"] == "joe"
    assert s.proto.env["SMTPAUTHUSER"] == "joe"


def test_relaying_refused_without_auth(root):
    """The same session without AUTH cannot relay: 553 rcpthosts."""
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    out = s.lines(b"MAIL FROM:<joe@example.com>\r\nRCPT TO:<x@elsewhere.net>\r\n")
    assert out[1] == b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"


def test_plaintext_auth_when_rules_allow(root):
    """FORCETLS="0" allows AUTH without TLS; the Received PROTO is then ESMTPA."""
    s = SecureSession(root, env={"SMTPAUTH": "", "FORCETLS": "0"})
    assert b"250-AUTH LOGIN PLAIN" in s.lines(b"EHLO x\r\n")
    assert s.lines(b"AUTH LOGIN\r\n") == [b"334 VXNlcm5hbWU6"]
    assert s.lines(b64(b"joe") + b"\r\n") == [b"334 UGFzc3dvcmQ6"]
    assert s.lines(b64(b"secret") + b"\r\n") == [b"235 ok, go ahead (#2.0.0)"]
    s.send(b"MAIL FROM:<>\r\nRCPT TO:<a@far.example>\r\nDATA\r\nx\r\n.\r\n")
    assert b" with ESMTPA; " in b"".join(s.queue.writers[0].data)


def test_starttls_forgets_plaintext_auth(root):
    """AUTH done in plaintext (when allowed) is reset by STARTTLS, with its env changes."""
    s = SecureSession(root, env={"SMTPAUTH": "", "FORCETLS": "0"})
    assert plainLogin(s) == [b"235 ok, go ahead (#2.0.0)"]
    s.send(b"STARTTLS\r\n")
    assert s.proto.authUser is None and s.proto.relayclient is None
    assert "TCPREMOTEINFO" not in s.proto.env and "RELAYCLIENT" not in s.proto.env
    assert plainLogin(s) == [b"235 ok, go ahead (#2.0.0)"]


@pytest.mark.parametrize("setup, line, reply", [
    (b"", b"AUTH GSSAPI", b"504 auth type unimplemented (#5.5.1)"),
    (b"", b"AUTH PLAIN !!!", b"501 malformed auth input (#5.5.4)"),
    (b"", b"AUTH PLAIN *", b"501 auth exchange canceled (#5.0.0)"),
    (b"MAIL FROM:<a@b>\r\n", b"AUTH PLAIN", b"503 no auth during mail transaction (#5.5.0)"),
])
def test_auth_error_replies(root, setup, line, reply):
    """Unknown mechanism 504, malformed 501, canceled 501, during a transaction 503."""
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    s.send(setup)
    assert s.lines(line + b"\r\n") == [reply]
    assert s.proto.sasl is None
    assert s.lines(b"NOOP\r\n") == [b"250 ok"]


def test_auth_cancel_midway_and_bad_base64_midway(root):
    """'*' or bad base64 in the middle of LOGIN ends the exchange; commands work again."""
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    assert s.lines(b"AUTH LOGIN\r\n*\r\n") == [b"334 VXNlcm5hbWU6",
                                                b"501 auth exchange canceled (#5.0.0)"]
    assert s.lines(b"AUTH PLAIN\r\n") == [b"334 "]
    assert s.lines(b"@@@\r\n") == [b"501 malformed auth input (#5.5.4)"]
    assert s.lines(b"NOOP\r\n") == [b"250 ok"]


def test_auth_twice(root):
    """A second AUTH after success: 503 already authenticated; RSET does not undo AUTH."""
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    plainLogin(s)
    assert s.lines(b"RSET\r\n") == [b"250 flushed"]
    assert plainLogin(s) == [b"503 you're already authenticated (#5.5.0)"]


def test_auth_before_ehlo_is_fine(root):
    """No command needs HELO first (§2): AUTH right after STARTTLS works."""
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    assert plainLogin(s) == [b"235 ok, go ahead (#2.0.0)"]


def test_failed_auth_is_delayed_and_holds_input(root):
    """
    A refused password gets 535 only after the throttle delay; pipelined input waits behind
    it; the delay doubles for the next failure on the connection.
    """
    s = SecureSession(root, env=AUTH_ENV)
    s.send(b"STARTTLS\r\n")
    out = s.send(b"AUTH PLAIN " + b64(b"\0joe\0wrong") + b"\r\nNOOP\r\n")
    assert out == b""
    s.clock.advance(smtpauth.FAILURE_DELAY - 0.1)
    assert s.transport.value() == b""
    s.clock.advance(0.1)
    assert s.transport.value() == b"535 authentication failed (#5.7.1)\r\n250 ok\r\n"
    s.transport.clear()
    s.proto.dataReceived(b"AUTH PLAIN " + b64(b"\0joe\0wrong") + b"\r\n")
    s.clock.advance(smtpauth.FAILURE_DELAY * 2 - 0.1)
    assert s.transport.value() == b""
    s.clock.advance(0.1)
    assert s.transport.value() == b"535 authentication failed (#5.7.1)\r\n"


def test_failures_from_one_ip_slow_other_connections(root):
    """The throttle is per IP across connections of the listener."""
    s1 = SecureSession(root, env=AUTH_ENV)
    s1.send(b"STARTTLS\r\n")
    s1.send(b"AUTH PLAIN " + b64(b"\0joe\0wrong") + b"\r\n")
    s1.clock.advance(smtpauth.FAILURE_DELAY)
    s2 = s1.factory.buildProtocol(None)
    s2.env = {"TCPREMOTEIP": "10.0.0.1", "TCPLOCALIP": "127.0.0.1", "SMTPS": "1",
              "SMTPAUTH": ""}
    t2 = TLSTransport()
    s2.makeConnection(t2)
    t2.clear()
    s2.dataReceived(b"AUTH PLAIN " + b64(b"\0joe\0wrong") + b"\r\n")
    s1.clock.advance(smtpauth.FAILURE_DELAY)
    assert t2.value() == b""
    s1.clock.advance(smtpauth.FAILURE_DELAY)
    assert t2.value() == b"535 authentication failed (#5.7.1)\r\n"


def test_failing_ip_cannot_skip_the_wait_by_hanging_up(root):
    """
    A client that hangs up instead of waiting for its 535 and tries again at once has its
    next check held for the rest of the delay, even with the right password (the 235 would
    otherwise come at once and tell it so); one that hangs up while held gets no check and
    holds up no one; two sessions waiting at once are checked one delay apart.
    """
    def session():
        t = TLSTransport()
        p = s1.factory.buildProtocol(None)
        p.env = {"TCPREMOTEIP": "10.0.0.1", "TCPLOCALIP": "127.0.0.1", "SMTPS": "1",
                 "SMTPAUTH": ""}
        p.makeConnection(t)
        t.clear()
        return p, t

    s1 = SecureSession(root, env=AUTH_ENV)
    s1.send(b"STARTTLS\r\n")
    s1.send(b"AUTH PLAIN " + b64(b"\0joe\0wrong") + b"\r\n")
    s1.clock.advance(0.5)
    s1.transport.loseConnection()
    s1.proto.connectionLost(None)
    for _ in range(20):
        gone, _ = session()
        gone.dataReceived(b"AUTH PLAIN " + b64(b"\0joe\0guess") + b"\r\n")
        gone.connectionLost(None)
    s2, t2 = session()
    s2.dataReceived(b"AUTH PLAIN " + b64(b"\0joe\0secret") + b"\r\n")
    s3, t3 = session()
    s3.dataReceived(b"AUTH PLAIN " + b64(b"\0joe\0secret") + b"\r\n")
    assert len(s1.checker.calls) == 1
    s1.clock.advance(smtpauth.FAILURE_DELAY - 0.5 - 0.1)
    assert t2.value() == b"" and len(s1.checker.calls) == 1
    s1.clock.advance(0.1)
    assert t2.value() == b"235 ok, go ahead (#2.0.0)\r\n" and t3.value() == b""
    s1.clock.advance(smtpauth.FAILURE_DELAY)
    assert t3.value() == b"235 ok, go ahead (#2.0.0)\r\n"
    assert [call[2] for call in s1.checker.calls] == [b"wrong", b"secret", b"secret"]
    assert not [c for c in s1.clock.getDelayedCalls()
                if getattr(c.func, "__name__", "") == "_admit"]  # hung up: none left


def test_hang_up_cancels_the_checker(root):
    """
    A client that hangs up while checkpassword runs has the check cancelled (the checker
    killed): otherwise --maxconn bounds sessions but not checkers.  A check that has
    answered is not cancelled again.
    """
    from twisted.python.failure import Failure

    s = SecureSession(root, env=AUTH_ENV, users={b"joe": "hold"})
    s.send(b"STARTTLS\r\n")
    s.send(b"AUTH PLAIN " + b64(b"\0joe\0secret") + b"\r\n")
    s.proto.connectionLost(Failure(Exception("gone")))
    assert s.checker.cancelled == [b"joe"]

    s = SecureSession(root, env=AUTH_ENV, users={b"joe": "hold"})
    s.send(b"STARTTLS\r\n")
    s.send(b"AUTH PLAIN " + b64(b"\0joe\0secret") + b"\r\n")
    s.checker.pending.callback(None)
    assert s.transport.value().endswith(b"235 ok, go ahead (#2.0.0)\r\n")
    s.proto.connectionLost(Failure(Exception("gone")))
    assert s.checker.cancelled == []


@pytest.mark.parametrize("error, reply", [
    (TempFailure(checkpassword.CRASHED), smtpauth.CHILD_PROBLEM),
    (TempFailure(checkpassword.NO_FORK), smtpauth.CHILD_WONT_START),
])
def test_checkpassword_trouble_454(root, error, reply):
    """A crashed or unstartable checkpassword: 454 oops ... (#4.3.0), at once."""
    s = SecureSession(root, env=AUTH_ENV, users={b"joe": error})
    s.send(b"STARTTLS\r\n")
    assert plainLogin(s) == [reply]
    assert s.proto.authUser is None


def test_pipelined_mail_waits_for_checkpassword(root):
    """MAIL pipelined behind AUTH is held until checkpassword answers, then relays."""
    s = SecureSession(root, env={"SMTPAUTH": "!"}, users={b"joe": "hold"})
    s.send(b"STARTTLS\r\n")
    out = s.send(b"AUTH PLAIN " + b64(b"\0joe\0secret") + b"\r\nMAIL FROM:<joe@x>\r\n")
    assert out == b""
    s.checker.pending.callback(checkpassword.Authenticated(b"joe", b"/", 1, 1))
    assert s.transport.value() == b"235 ok, go ahead (#2.0.0)\r\n250 ok\r\n"


def test_auth_required_refuses_mail(root):
    """SMTPAUTH="!": MAIL before AUTH is 530; after AUTH it is accepted."""
    s = SecureSession(root, env={"SMTPAUTH": "!"})
    assert s.lines(b"MAIL FROM:<a@b>\r\n") == [b"530 Authorization required (#5.7.1)"]
    s.send(b"STARTTLS\r\n")
    assert s.lines(b"MAIL FROM:<a@b>\r\n") == [b"530 Authorization required (#5.7.1)"]
    plainLogin(s)
    assert s.lines(b"MAIL FROM:<a@b>\r\n") == [b"250 ok"]


def test_listener_default_env_and_rules_override(root):
    """A listener's defaultEnv (submission: SMTPAUTH="!") applies unless the rules set it."""
    s = SecureSession(root, defaultEnv={"SMTPAUTH": "!"})
    assert s.lines(b"MAIL FROM:<a@b>\r\n") == [b"530 Authorization required (#5.7.1)"]
    s = SecureSession(root, env={"SMTPAUTH": "-"}, defaultEnv={"SMTPAUTH": "!"})
    assert s.lines(b"MAIL FROM:<a@b>\r\n") == [b"250 ok"]


def test_cram_md5_passes_challenge(root):
    """CRAM-MD5: the checker gets user, digest and the <PID.TIME@LOCAL> challenge."""
    s = SecureSession(root, env={"SMTPAUTH": "+cram"}, users={b"joe": b"abc123"})
    s.send(b"STARTTLS\r\n")
    assert b"250-AUTH LOGIN PLAIN CRAM-MD5" in s.lines(b"EHLO x\r\n")
    line, = s.lines(b"AUTH CRAM-MD5\r\n")
    assert line.startswith(b"334 ")
    challenge = base64.b64decode(line[4:])
    assert challenge.startswith(b"<") and challenge.endswith(b".1732217160@127.0.0.1>")
    assert s.lines(b64(b"joe abc123") + b"\r\n") == [b"235 ok, go ahead (#2.0.0)"]
    assert s.checker.calls[0][1:4] == (b"joe", b"abc123", challenge)


def test_cram_challenges_differ_across_listeners(root):
    """
    The listeners of one process (smtp, submission, smtps) share the checkpassword, so a
    CRAM-MD5 challenge is never handed out twice by any of them: a response seen on one
    listener cannot be replayed on another in the same second.
    """
    challenges = set()
    for _ in range(2):
        s = SecureSession(root, env={"SMTPAUTH": "+cram"})
        s.send(b"STARTTLS\r\n")
        for _ in range(3):
            line, = s.lines(b"AUTH CRAM-MD5\r\n")
            challenges.add(line)
            assert s.lines(b"*\r\n") == [smtpauth.CANCELED]
    assert len(challenges) == 6


def test_auth_line_with_nul_is_malformed(root):
    """A LOGIN password carrying a NUL (a CRAM-MD5 digest and challenge, replayed) is 501 and
    never reaches checkpassword."""
    s = SecureSession(root, env={"SMTPAUTH": "+cram"})
    s.send(b"STARTTLS\r\n")
    s.lines(b"AUTH LOGIN " + b64(b"joe") + b"\r\n")
    assert s.lines(b64(b"0123abcd\0<1.2@x>") + b"\r\n") == [smtpauth.MALFORMED]
    assert s.checker.calls == []


def test_no_checkpassword_no_auth_but_still_required(root):
    """Without a checkpassword program AUTH is unavailable, yet SMTPAUTH="!" still holds."""
    s = SecureSession(root, env={"SMTPAUTH": "!"})
    s.factory.checkpassword = None
    s2 = s.factory.buildProtocol(None)
    s2.env = {"TCPREMOTEIP": "10.0.0.1", "SMTPAUTH": "!", "SMTPS": "1"}
    t = TLSTransport()
    s2.makeConnection(t)
    t.clear()
    s2.dataReceived(b"AUTH PLAIN\r\nMAIL FROM:<a@b>\r\n")
    assert t.value() == (b"503 auth not available (#5.3.3)\r\n"
                         b"530 Authorization required (#5.7.1)\r\n")
