"""
Client-certificate relaying through a live `twistd qmail` (spec/smtp.md §8): smtplib and swaks
present certificates made in the test, signed by the CA in control/clientca.pem (or not);
only a verified certificate whose address is in control/tlsclients may relay, and the
Received line then names it.  Messages go to a QMAILQUEUE keeper, as in test_smtp_tls.
"""

import os
import smtplib
import ssl
import time

import pytest

from tests.clientcerts import CA, writeClient
from tests.service.daemon import Daemon
from tests.service.pop3_support import makeChecker
from tests.service.test_smtp_tls import KEEPER, kept, swaks


@pytest.fixture(scope="module")
def ca():
    return CA()


@pytest.fixture
def site(qmailRoot, tmp_path, ca):
    """
    A daemon with smtp and smtps, tlsclients listing joe@ and san@example.com; the rules
    switch AUTH off (SMTPAUTH="-") so only a certificate can make a client relay.
    """
    control = qmailRoot / "control"
    (control / "tlsclients").write_bytes(b"joe@example.com\nsan@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    keptDir = tmp_path / "kept"
    keptDir.mkdir()
    keeper = tmp_path / "keeper"
    keeper.write_text(KEEPER.format(out=keptDir))
    keeper.chmod(0o755)
    auth = tmp_path / "auth"
    (auth / "home" / "joe").mkdir(parents=True)
    checker = makeChecker(str(auth), {"joe": "secret"})
    rules = tmp_path / "rules.smtp"
    rules.write_text(f':allow,SMTPAUTH="-",QMAILQUEUE="{keeper}"\n')
    daemon = Daemon(qmailRoot, listeners=("smtp", "smtps"),
                    extra=["--checkpassword", checker, "--rules", f"smtp={rules}",
                           "--rules", f"smtps={rules}"])
    daemon.kept = keptDir
    daemon.control = control
    daemon.start()
    yield daemon
    daemon.stop()


def clientContext(tmp_path, client=None):
    """A client context that trusts any server and presents C{client} (cert, key PEMs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(*writeClient(tmp_path, "client", *client))
    return ctx


def relay(s, rcpt="friend@far.example"):
    """MAIL and RCPT to a foreign domain; return the RCPT reply code (and send if 250)."""
    s.ehlo("client.example")
    s.mail("joe@example.com")
    code, _ = s.rcpt(rcpt)
    if code == 250:
        s.data(b"Subject: hi\r\n\r\nbody\r\n")
    else:
        s.rset()
    return code


def test_listed_certificate_relays_over_starttls(site, ca, tmp_path):
    """
    smtplib starttls() with a certificate whose emailAddress is listed: relaying allowed;
    Received says 'ESMTPS (<cipher> encrypted)\\n  (cert joe@example.com)'; the queue
    program sees RELAYCLIENT; the log names the address, version and cipher.
    """
    cert, key, _ = ca.issue("joe", email="joe@example.com")
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path, (cert, key)))
        cipher, version, _ = s.sock.cipher()
        assert relay(s) == 250
    (message, envelope, env), = kept(site)
    assert message.startswith(
        b"Received: from unknown (HELO client.example) (127.0.0.1)\n  by 127.0.0.1 with "
        b"ESMTPS (%s encrypted)\n  (cert joe@example.com); " % cipher.encode())
    assert envelope == b"Fjoe@example.com\0Tfriend@far.example\0\0"
    assert env[b"RELAYCLIENT"] == b""
    assert (f"smtp: tls client cert joe@example.com relaying from 127.0.0.1 "
            f"({version} {cipher})") in site.log()


def test_san_certificate_relays_over_smtps(site, ca, tmp_path):
    """SMTP_SSL with an rfc822Name-only certificate that is listed: relaying allowed."""
    cert, key, _ = ca.issue("san", sanEmail="san@example.com")
    with smtplib.SMTP_SSL("127.0.0.1", site.ports["smtps"],
                          context=clientContext(tmp_path, (cert, key))) as s:
        cipher = s.sock.cipher()[0]
        assert relay(s) == 250
    (message, _, _), = kept(site)
    assert (b" with ESMTPS (%s encrypted)\n  (cert san@example.com); " % cipher.encode()
            in message)


def test_unlisted_certificate_cannot_relay(site, ca, tmp_path):
    """A verified certificate whose address is not in tlsclients: 553, logged."""
    cert, key, _ = ca.issue("eve", email="eve@example.com")
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path, (cert, key)))
        assert relay(s) == 553
    assert "smtp: tls client cert eve@example.com not in tlsclients from 127.0.0.1" in site.log()


def test_no_certificate_uses_starttls_normally(site, tmp_path):
    """A client without a certificate: STARTTLS works, local mail is taken, relaying is not."""
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path))
        assert relay(s) == 553
        assert relay(s, "postmaster@mx.example.com") == 250
    (message, _, _), = kept(site)
    assert b"(cert" not in message


def test_unknown_ca_fails_and_plain_retry_works(site, tmp_path):
    """
    A certificate from a CA not in clientca.pem ends the session in the handshake (logged
    with the peer address); the same client reconnecting without a certificate is served
    (relaying still refused).
    """
    cert, key, _ = CA("Other CA").issue("joe", email="joe@example.com")
    with pytest.raises(OSError):
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=10) as s:
            s.starttls(context=clientContext(tmp_path, (cert, key)))
            relay(s)
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path))
        assert relay(s) == 553
    assert kept(site, timeout=0.5) == []
    assert "tls: CERTIFICATE_VERIFY_FAILED from 127.0.0.1" in site.log()


def test_tlsclients_edit_needs_no_restart(site, ca, tmp_path):
    """Removing an address from tlsclients stops its relaying a second later, no restart."""
    cert, key, _ = ca.issue("joe", email="joe@example.com")
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path, (cert, key)))
        assert relay(s) == 250
    new = site.control / "tlsclients.new"
    new.write_bytes(b"san@example.com\n")
    os.rename(new, site.control / "tlsclients")
    time.sleep(1.2)
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
        s.starttls(context=clientContext(tmp_path, (cert, key)))
        assert relay(s) == 553


def test_swaks_client_certificate(site, ca, tmp_path):
    """swaks --tls-cert/--tls-key with a listed certificate relays; the cert is named."""
    cert, key, _ = ca.issue("joe", email="joe@example.com")
    certFile, keyFile = writeClient(tmp_path, "swaks", cert, key)
    result = swaks("--server", "127.0.0.1", "--port", str(site.ports["smtp"]), "--tls",
                   "--tls-cert", certFile, "--tls-key", keyFile,
                   "--from", "joe@example.com", "--to", "x@far.example",
                   "--helo", "swaks.example", "--body", "from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    (message, envelope, _), = kept(site)
    assert envelope == b"Fjoe@example.com\0Tx@far.example\0\0"
    assert b" encrypted)\n  (cert joe@example.com); " in message
