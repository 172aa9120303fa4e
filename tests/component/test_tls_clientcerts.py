"""
Client certificates in qmailtx.tls (spec/smtp.md §8): when control/tlsclients and
clientca.pem exist the standard-library contexts ask for a certificate and verify it (and
its CRL), the trust follows the files without a restart, and the addresses a verified
certificate carries are matched against tlsclients.  Real handshakes over socketpairs.
"""

import os
import socket
import ssl
import threading

import pytest
from twisted.internet import task

from qmailtx import tls
from qmailtx.control import ControlDir
from tests.clientcerts import CA, writeClient


@pytest.fixture(scope="module")
def ca():
    return CA()


@pytest.fixture
def control(tmp_path):
    d = tmp_path / "control"
    d.mkdir()
    (d / "servercert.pem").write_bytes(tls.selfSignedPEM(b"mx.example.com"))
    return d


def trustFor(control, clock=None):
    clock = clock or task.Clock()
    return tls.ClientCertificates(ControlDir(str(control)), clock), clock


def handshake(server, trust, tmp_path, client=None):
    """
    A real handshake (stdlib ssl on both sides) with ServerTLS's context for C{trust};
    C{client} is C{(certPEM, keyPEM)} or C{None}.  Returns (server's getpeercert(), the
    server's error or None).
    """
    ctx = server.sslContext(None, trust)
    a, b = socket.socketpair()
    result = {}

    def serve():
        try:
            with ctx.wrap_socket(a, server_side=True) as s:
                result["peer"] = s.getpeercert()
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            result["error"] = e

    thread = threading.Thread(target=serve)
    thread.start()
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        cctx.load_cert_chain(*writeClient(tmp_path, "client", *client))
    try:
        with cctx.wrap_socket(b) as c:
            c.recv(2)
    except (ssl.SSLError, OSError):
        pass
    finally:
        thread.join(5)
        b.close()
    return result.get("peer"), result.get("error")


def test_no_tlsclients_no_trust(control, ca):
    """Without control/tlsclients nothing is requested, even with clientca.pem present."""
    (control / "clientca.pem").write_bytes(ca.pem())
    assert trustFor(control)[0].current() is None


def test_no_clientca_no_trust(control):
    """tlsclients without clientca.pem: nothing requested (a missing CA means no request)."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    assert trustFor(control)[0].current() is None


def test_trust_lists_lowercased_clients_and_crl(control, ca):
    """The trust holds tlsclients lowercased and names clientcrl.pem only if it exists."""
    (control / "tlsclients").write_bytes(b"# relays\nJoe@Example.COM\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    certs, clock = trustFor(control)
    trust = certs.current()
    assert trust.clients == frozenset({b"joe@example.com"})
    assert trust.crlPath is None
    (control / "clientcrl.pem").write_bytes(ca.crl())
    assert certs.current() is trust
    clock.advance(tls.CLIENT_RECHECK)
    assert certs.current().crlPath == str(control / "clientcrl.pem")


def test_files_rechecked_at_most_once_a_second(control, ca):
    """Removing tlsclients stops requests after CLIENT_RECHECK seconds, not before."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    certs, clock = trustFor(control)
    assert certs.current() is not None
    os.unlink(control / "tlsclients")
    clock.advance(tls.CLIENT_RECHECK - 0.1)
    assert certs.current() is not None
    clock.advance(0.1)
    assert certs.current() is None


def test_certificate_emails_subject_then_san():
    """Subject emailAddress first, then rfc822Name SANs; other names ignored."""
    peer = {"subject": ((("commonName", "x"),), (("emailAddress", "a@x.example"),)),
            "subjectAltName": (("DNS", "x.example"), ("email", "b@x.example"))}
    assert tls.certificateEmails(peer) == [b"a@x.example", b"b@x.example"]
    assert tls.certificateEmails({}) == []


def test_relay_email_matches_any_case():
    """relayEmail: the first listed address, compared case-insensitively, else None."""
    trust = tls.ClientTrust("ca", None, frozenset({b"b@x.example"}), None)
    peer = {"subject": ((("emailAddress", "a@x.example"),),),
            "subjectAltName": (("email", "B@X.example"),)}
    assert trust.relayEmail(peer) == b"B@X.example"
    assert trust.relayEmail({"subject": ((("emailAddress", "a@x.example"),),)}) is None


def test_verified_certificate_reaches_server(control, ca, tmp_path):
    """A client certificate from clientca.pem's CA is verified; its emailAddress is seen."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    trust = trustFor(control)[0].current()
    server = tls.ServerTLS(str(control / "servercert.pem"))
    cert, key, _ = ca.issue(email="joe@example.com")
    peer, error = handshake(server, trust, tmp_path, (cert, key))
    assert error is None
    assert trust.relayEmail(peer) == b"joe@example.com"


def test_no_client_certificate_still_served(control, ca, tmp_path):
    """CERT_OPTIONAL: a client without a certificate completes the handshake."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    trust = trustFor(control)[0].current()
    server = tls.ServerTLS(str(control / "servercert.pem"))
    assert server.sslContext(None, trust).verify_mode == ssl.CERT_OPTIONAL
    peer, error = handshake(server, trust, tmp_path)
    assert error is None and not peer


def test_unknown_ca_fails_handshake(control, ca, tmp_path):
    """A certificate from another CA is refused in the handshake."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    trust = trustFor(control)[0].current()
    server = tls.ServerTLS(str(control / "servercert.pem"))
    cert, key, _ = CA("Other CA").issue(email="joe@example.com")
    peer, error = handshake(server, trust, tmp_path, (cert, key))
    assert isinstance(error, ssl.SSLError) and peer is None


def test_revoked_certificate_fails_with_crl(control, ca, tmp_path):
    """With clientcrl.pem, a revoked certificate fails and an unrevoked one passes."""
    good, goodKey, _ = ca.issue(email="good@example.com")
    bad, badKey, badSerial = ca.issue(email="bad@example.com")
    (control / "tlsclients").write_bytes(b"good@example.com\nbad@example.com\n")
    (control / "clientca.pem").write_bytes(ca.pem())
    (control / "clientcrl.pem").write_bytes(ca.crl([badSerial]))
    trust = trustFor(control)[0].current()
    server = tls.ServerTLS(str(control / "servercert.pem"))
    peer, error = handshake(server, trust, tmp_path, (good, goodKey))
    assert error is None and trust.relayEmail(peer) == b"good@example.com"
    peer, error = handshake(server, trust, tmp_path, (bad, badKey))
    assert isinstance(error, ssl.SSLError) and peer is None


def test_unloadable_clientca_requests_nothing(control, tmp_path, ca):
    """A broken clientca.pem: STARTTLS still works, no certificate is asked for."""
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(b"not a certificate\n")
    trust = trustFor(control)[0].current()
    server = tls.ServerTLS(str(control / "servercert.pem"))
    assert server.sslContext(None, trust).verify_mode == ssl.CERT_NONE
    cert, key, _ = ca.issue(email="joe@example.com")
    peer, error = handshake(server, trust, tmp_path, (cert, key))
    assert error is None and peer is None


def test_changed_ca_file_builds_new_context(control, tmp_path):
    """A replaced clientca.pem (another CA) is what the next handshake verifies against."""
    one, two = CA("One"), CA("Two")
    (control / "tlsclients").write_bytes(b"joe@example.com\n")
    (control / "clientca.pem").write_bytes(one.pem())
    certs, clock = trustFor(control)
    server = tls.ServerTLS(str(control / "servercert.pem"))
    cert, key, _ = two.issue(email="joe@example.com")
    assert handshake(server, certs.current(), tmp_path, (cert, key))[1] is not None
    new = control / "clientca.pem.new"
    new.write_bytes(two.pem())
    os.rename(new, control / "clientca.pem")
    clock.advance(tls.CLIENT_RECHECK)
    peer, error = handshake(server, certs.current(), tmp_path, (cert, key))
    assert error is None and peer


def test_plain_context_unchanged_without_trust(control):
    """Without a trust the context asks for no certificate (POP3 and SMTP alike)."""
    server = tls.ServerTLS(str(control / "servercert.pem"))
    assert server.sslContext().verify_mode == ssl.CERT_NONE
