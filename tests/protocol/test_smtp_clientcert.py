"""
The TLS detail of the Received line and client-certificate relaying in the SMTP dialogue
(spec/smtp.md §8) over StringTransport: the handshake's outcome is given as a TLSInfo, as
qmailtx.tlstransport reports it after a real handshake.
"""

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from qmailtx.tlstransport import TLSInfo
from tests.clientcerts import CA
from tests.protocol.test_smtp import root  # noqa: F401 (fixture)
from tests.protocol.test_smtp_secure import SecureSession, plainLogin

CIPHER = "TLS_AES_256_GCM_SHA384"
JOE = {"subject": ((("commonName", "joe"),), (("emailAddress", "joe@example.com"),))}


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) for e in events]
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(scope="module")
def caPEM():
    return CA().pem()


def listClients(root, caPEM, clients=b"joe@example.com\n"):
    (root / "control" / "tlsclients").write_bytes(clients)
    (root / "control" / "clientca.pem").write_bytes(caPEM)


def starttls(s, peer=None, cipher=CIPHER):
    """STARTTLS, then a handshake that agreed on C{cipher} with certificate C{peer}."""
    info = TLSInfo("TLSv1.3", cipher, peer or {})
    s.transport.tlsInfo = lambda: info
    assert s.lines(b"STARTTLS\r\n") == [b"220 ready for tls"]
    s.proto.handshakeCompleted()


def message(s, rcpt=b"x@example.com"):
    """Send one message; return (RCPT reply, Received line of what was queued or None)."""
    out = s.lines(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<" + rcpt + b">\r\n")
    rcptReply = out[-1]
    if rcptReply != b"250 ok":
        s.send(b"RSET\r\n")
        return rcptReply, None
    s.send(b"DATA\r\nx\r\n.\r\n")
    data = b"".join(s.queue.writers[-1].data)
    return rcptReply, data[:data.index(b"-0000\n") + 6]


def test_received_names_cipher_after_starttls(root):
    """After STARTTLS the PROTO is qmail-tls's 'ESMTPS (<cipher> encrypted)'."""
    s = SecureSession(root)
    starttls(s)
    _, received = message(s)
    assert received == (b"Received: from unknown (HELO c) (10.0.0.1)\n"
                        b"  by 127.0.0.1 with ESMTPS (TLS_AES_256_GCM_SHA384 encrypted); "
                        b"21 Nov 2024 19:26:00 -0000\n")


def test_received_after_auth_under_tls(root, logged):
    """
    With AUTH under TLS: 'ESMTPSA (<cipher> encrypted)', the user in the (user@IP) part;
    the auth log line carries the protocol version and cipher.
    """
    s = SecureSession(root, env={"SMTPAUTH": ""})
    starttls(s)
    assert plainLogin(s) == [b"235 ok, go ahead (#2.0.0)"]
    _, received = message(s, b"x@far.example")
    assert received.startswith(b"Received: from unknown (HELO c) (joe@10.0.0.1)\n"
                               b"  by 127.0.0.1 with ESMTPSA (TLS_AES_256_GCM_SHA384 "
                               b"encrypted); ")
    assert "smtp: auth ok joe from 10.0.0.1 (TLSv1.3 TLS_AES_256_GCM_SHA384)" in logged()


def test_smtps_received_names_cipher(root):
    """Implicit TLS: the same PROTO, and the banner only after the handshake."""
    s = SecureSession(root, env={"SMTPS": "1"})
    s.transport.tlsInfo = lambda: TLSInfo("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", {})
    s.proto.handshakeCompleted()
    assert s.transport.value() == b"220 mx.example.com ESMTP\r\n"
    _, received = message(s)
    assert b" with ESMTPS (ECDHE-ECDSA-AES128-GCM-SHA256 encrypted); " in received


def test_cipher_text_is_made_safe(root):
    """Whatever the TLS library names, PROTO keeps no space, parenthesis or ';' from it."""
    s = SecureSession(root)
    starttls(s, cipher="A B(C);\n")
    _, received = message(s)
    assert b" with ESMTPS (A?B?C??? encrypted); " in received


def test_unknown_tls_detail_keeps_bare_keyword(root):
    """A transport that cannot tell the cipher still gives 'ESMTPS'."""
    s = SecureSession(root)
    s.send(b"STARTTLS\r\n")
    s.proto.handshakeCompleted()
    assert b" with ESMTPS; " in message(s)[1]


def test_listed_certificate_relays(root, caPEM, logged):
    """
    A verified certificate whose emailAddress is in tlsclients: relaying as with
    RELAYCLIENT="", '\\n  (cert <email>)' after the PROTO, RELAYCLIENT in the queue's env.
    """
    listClients(root, caPEM)
    s = SecureSession(root)
    starttls(s, JOE)
    reply, received = message(s, b"x@far.example")
    assert reply == b"250 ok"
    assert received.endswith(b"  by 127.0.0.1 with ESMTPS (TLS_AES_256_GCM_SHA384 encrypted)"
                             b"\n  (cert joe@example.com); 21 Nov 2024 19:26:00 -0000\n")
    assert s.proto.env["RELAYCLIENT"] == ""
    assert ("smtp: tls client cert joe@example.com relaying from 10.0.0.1 "
            "(TLSv1.3 TLS_AES_256_GCM_SHA384)") in logged()


def test_san_email_relays(root, caPEM):
    """An rfc822Name subjectAltName counts as the certificate's address too."""
    listClients(root, caPEM, b"# tls relays\nJOE@example.com\n")
    s = SecureSession(root)
    starttls(s, {"subject": ((("commonName", "joe"),),),
                 "subjectAltName": (("DNS", "joe.example"), ("email", "joe@example.com"))})
    reply, received = message(s, b"x@far.example")
    assert reply == b"250 ok" and b"\n  (cert joe@example.com); " in received


def test_unlisted_certificate_does_not_relay(root, caPEM, logged):
    """A verified certificate not in tlsclients changes nothing: 553, and it is logged."""
    listClients(root, caPEM, b"someone@example.com\n")
    s = SecureSession(root)
    starttls(s, JOE)
    reply, _ = message(s, b"x@far.example")
    assert reply.startswith(b"553 ")
    assert "smtp: tls client cert joe@example.com not in tlsclients from 10.0.0.1" in logged()
    assert b"(cert" not in message(s)[1]


def test_no_certificate_no_relay(root, caPEM):
    """With tlsclients configured, a client without a certificate is an ordinary client."""
    listClients(root, caPEM)
    s = SecureSession(root)
    starttls(s)
    assert message(s, b"x@far.example")[0].startswith(b"553 ")


def test_without_tlsclients_certificate_ignored(root, caPEM):
    """No control/tlsclients: even a certificate handed over is not looked at."""
    (root / "control" / "clientca.pem").write_bytes(caPEM)
    s = SecureSession(root)
    starttls(s, JOE)
    assert message(s, b"x@far.example")[0].startswith(b"553 ")


def test_relayclient_from_rules_wins(root, caPEM):
    """
    A session that already relays (RELAYCLIENT from the rules) keeps its RELAYCLIENT and
    does not name the certificate: qmail-tls names it only when it allowed relaying.
    """
    listClients(root, caPEM)
    s = SecureSession(root, env={"RELAYCLIENT": "@hub.example"})
    starttls(s, JOE)
    _, received = message(s, b"x@far.example")
    assert s.queue.writers[-1].envelope[1] == [b"x@far.example@hub.example"]
    assert b"(cert" not in received


def test_smtps_certificate_checked_before_banner(root, caPEM):
    """Implicit TLS with a listed certificate: relaying from the first command on."""
    listClients(root, caPEM)
    s = SecureSession(root, env={"SMTPS": "1"})
    s.transport.tlsInfo = lambda: TLSInfo("TLSv1.3", CIPHER, JOE)
    s.proto.handshakeCompleted()
    assert s.transport.value() == b"220 mx.example.com ESMTP\r\n"
    reply, received = message(s, b"x@far.example")
    assert reply == b"250 ok" and b"\n  (cert joe@example.com); " in received


def test_unreadable_tlsclients_is_454(root, caPEM):
    """control/tlsclients that cannot be read: STARTTLS answers 454, the session goes on."""
    listClients(root, caPEM)
    (root / "control" / "tlsclients").unlink()
    (root / "control" / "tlsclients").mkdir()
    s = SecureSession(root)
    assert s.lines(b"STARTTLS\r\n") == [
        b"454 TLS unable to read control/tlsclients (#4.3.0)"]
    assert s.lines(b"NOOP\r\n") == [b"250 ok"]
