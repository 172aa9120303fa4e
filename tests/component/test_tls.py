"""
control/servercert.pem on disk (spec/smtp.md §8): contexts built from it, reloaded when it
changes, kept when a replacement is broken; the certificate `qmailtx init` installs.
"""

import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from OpenSSL import SSL

from qmailtx import tls
from qmailtx.rootdir import createRoot


def handshake(server, ciphers=None, maximum=None):
    """Run a real handshake over a socketpair; return (version, peer cert subject CN)."""
    a, b = socket.socketpair()
    conn = SSL.Connection(server.context(ciphers), a)
    conn.set_accept_state()
    errors = []

    def serve():
        try:
            conn.do_handshake()
        except SSL.Error as e:
            errors.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
    try:
        with ctx.wrap_socket(b) as client:
            der = client.getpeercert(binary_form=True)
            version = client.version()
    finally:
        thread.join(5)
        a.close()
    cert = x509.load_der_x509_certificate(der)
    return version, cert.subject.rfc4514_string()


def test_self_signed_serves(tmp_path):
    """A selfSignedPEM file serves a TLS 1.3 handshake with CN = the host name."""
    path = tmp_path / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"mx.example.com"))
    version, subject = handshake(tls.ServerTLS(str(path)))
    assert version == "TLSv1.3"
    assert subject == "CN=mx.example.com"


def test_tls_1_1_refused(tmp_path):
    """A client that stops at TLS 1.1 cannot connect: TLS 1.2 is the minimum."""
    path = tmp_path / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"mx.example.com"))
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(tls.ServerTLS(str(path)), maximum=ssl.TLSVersion.TLSv1_1)


def test_tls_1_2_with_cipher_list(tmp_path):
    """A TLS 1.2 client negotiates with a cipher list from the caller."""
    path = tmp_path / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"mx.example.com"))
    version, _ = handshake(tls.ServerTLS(str(path)), b"ECDHE-ECDSA-AES128-GCM-SHA256",
                           maximum=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"


def test_reload_on_change_and_keep_on_breakage(tmp_path):
    """
    Replacing the PEM changes the certificate served on the next handshake; a broken
    replacement is ignored (the previous one keeps serving) until a good one arrives.
    """
    path = tmp_path / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"one.example.com"))
    server = tls.ServerTLS(str(path))
    assert handshake(server)[1] == "CN=one.example.com"
    tmp = tmp_path / "new.pem"
    tmp.write_bytes(tls.selfSignedPEM(b"two.example.com"))
    os.rename(tmp, path)
    assert handshake(server)[1] == "CN=two.example.com"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert handshake(server)[1] == "CN=two.example.com"
    path.write_bytes(tls.selfSignedPEM(b"three.example.com"))
    assert handshake(server)[1] == "CN=three.example.com"


def test_key_and_certificate_must_match(tmp_path):
    """A key from one PEM with the certificate of another: TLSSetupError."""
    one = tls.selfSignedPEM(b"a")
    two = tls.selfSignedPEM(b"b")
    keyOfOne = one.split(b"-----END PRIVATE KEY-----")[0] + b"-----END PRIVATE KEY-----\n"
    certOfTwo = two[two.index(b"-----BEGIN CERTIFICATE-----"):]
    with pytest.raises(tls.TLSSetupError):
        tls.buildContext(keyOfOne + certOfTwo)
    with pytest.raises(tls.TLSSetupError):
        tls.buildContext(certOfTwo)


def test_missing_file_is_setup_error(tmp_path):
    """No file and nothing loaded before: TLSSetupError naming the read problem."""
    with pytest.raises(tls.TLSSetupError) as e:
        tls.ServerTLS(str(tmp_path / "nope.pem")).context()
    assert e.value.args[0].startswith(b"unable to read certificate")


def test_bad_file_fails_every_time_until_fixed(tmp_path):
    """With nothing good loaded yet, an unusable file fails each use (not only the first,
    leaving None behind for the next), and is read again once it changes."""
    path = tmp_path / "servercert.pem"
    good = tls.selfSignedPEM(b"mx.example.com")
    path.write_bytes(good[:300])
    server = tls.ServerTLS(str(path))
    for _ in range(3):
        with pytest.raises(tls.TLSSetupError):
            server.context()
        with pytest.raises(tls.TLSSetupError):
            server.sslContext()
    path.write_bytes(good)
    assert server.context() is not None and server.sslContext() is not None


def test_chain_is_sent(tmp_path):
    """Extra certificates after the first are sent as the chain."""
    pem = tls.selfSignedPEM(b"leaf.example.com")
    extra = tls.selfSignedPEM(b"ca.example.com")
    chain = pem + extra[extra.index(b"-----BEGIN CERTIFICATE-----"):]
    ctx = tls.buildContext(chain)
    a, b = socket.socketpair()
    conn = SSL.Connection(ctx, a)
    conn.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), b)
    client.set_connect_state()
    threading.Thread(target=lambda: conn.do_handshake()).start()
    client.do_handshake()
    names = [c.subject.rfc4514_string() for c in client.get_peer_cert_chain(as_cryptography=True)]
    assert names == ["CN=leaf.example.com", "CN=ca.example.com"]
    a.close()
    b.close()


def test_init_installs_private_certificate(tmp_path):
    """qmailtx init writes control/servercert.pem, mode 0600, for the root's host name."""
    root = tmp_path / "root"
    createRoot(str(root), "mx.example.com")
    path = root / "control" / "servercert.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert b"PRIVATE KEY" in data
    cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])
    assert cert.subject.rfc4514_string() == "CN=mx.example.com"
    tls.buildContext(data)


def stdlibHandshake(server, ciphers=None, maximum=None):
    """As L{handshake}, but served by the C{ssl.SSLContext} listeners use."""
    a, b = socket.socketpair()
    errors = []
    serverSock = server.sslContext(ciphers).wrap_socket(a, server_side=True,
                                                        do_handshake_on_connect=False)

    def serve():
        try:
            serverSock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            errors.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    try:
        with ctx.wrap_socket(b) as client:
            der = client.getpeercert(binary_form=True)
            version, cipher = client.version(), client.cipher()[0]
    finally:
        thread.join(5)
        serverSock.close()
    cert = x509.load_der_x509_certificate(der)
    return version, cert.subject.rfc4514_string(), cipher


def test_stdlib_context_serves_chain_and_policy(tmp_path):
    """
    The ssl.SSLContext from servercert.pem serves the leaf and its chain, TLS 1.3, and
    TLS 1.2 only with the caller's cipher list.
    """
    pem = tls.selfSignedPEM(b"leaf.example.com")
    extra = tls.selfSignedPEM(b"ca.example.com")
    path = tmp_path / "servercert.pem"
    path.write_bytes(pem + extra[extra.index(b"-----BEGIN CERTIFICATE-----"):])
    server = tls.ServerTLS(str(path))
    version, subject, _ = stdlibHandshake(server)
    assert (version, subject) == ("TLSv1.3", "CN=leaf.example.com")
    version, _, cipher = stdlibHandshake(server, b"ECDHE-ECDSA-AES128-GCM-SHA256",
                                         ssl.TLSVersion.TLSv1_2)
    assert (version, cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    a, b = socket.socketpair()
    served = server.sslContext().wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), b)
    client.set_connect_state()
    thread = threading.Thread(target=served.do_handshake)
    thread.start()
    client.do_handshake()
    thread.join(5)
    names = [c.subject.rfc4514_string() for c in client.get_peer_cert_chain(as_cryptography=True)]
    served.close()
    b.close()
    assert names == ["CN=leaf.example.com", "CN=ca.example.com"]


def test_stdlib_context_refuses_what_pyopenssl_refuses(tmp_path):
    """Mismatched key, no key, an encrypted key (never prompted for), no usable cipher."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    one = tls.selfSignedPEM(b"a")
    two = tls.selfSignedPEM(b"b")
    keyOfOne = one.split(b"-----END PRIVATE KEY-----")[0] + b"-----END PRIVATE KEY-----\n"
    certOfTwo = two[two.index(b"-----BEGIN CERTIFICATE-----"):]
    certOfOne = one[one.index(b"-----BEGIN CERTIFICATE-----"):]
    encrypted = load_pem_private_key(keyOfOne, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    for pem in (keyOfOne + certOfTwo, certOfTwo, encrypted + certOfOne):
        with pytest.raises(tls.TLSSetupError):
            tls.buildSSLContext(pem)
    with pytest.raises(tls.TLSSetupError) as e:
        tls.buildSSLContext(one, b"NO-SUCH-CIPHER")
    assert e.value.args[0] == b"cipher list selects no cipher"


def test_stdlib_context_follows_the_file(tmp_path):
    """A replaced PEM is served by the next ssl.SSLContext; a broken one keeps the previous."""
    path = tmp_path / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"one.example.com"))
    server = tls.ServerTLS(str(path))
    assert stdlibHandshake(server)[1] == "CN=one.example.com"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert stdlibHandshake(server)[1] == "CN=one.example.com"
    path.write_bytes(tls.selfSignedPEM(b"two.example.com"))
    assert stdlibHandshake(server)[1] == "CN=two.example.com"
