"""
Server TLS from C{control/servercert.pem} (spec/smtp.md §8), for every listener that speaks
TLS (SMTP STARTTLS, SMTPS, POP3 STLS/POP3S).

The PEM holds the private key and the certificate chain in one file, as qmail-tls keeps it.
L{ServerTLS} builds contexts from it (TLS 1.2 or newer, forward-secret AEAD ciphers unless
C{TLSCIPHERS}/C{control/tlsserverciphers} say otherwise) and rebuilds them when the file
changes, so replacing the certificate takes effect on the next handshake without a restart; a
broken replacement is logged and the previous one kept.  Listeners serve through the standard
library's C{ssl} (L{ServerTLS.serverObject}, for L{qmailtx.tlstransport}: it costs a fraction
of pyOpenSSL's per record); the pyOpenSSL context remains for Twisted's own TLS
(C{startTLS}, C{TLSMemoryBIOFactory}).  L{selfSignedPEM} makes the certificate that
C{qmailtx init} installs.

Client certificates (spec/smtp.md §8): while C{control/tlsclients} and C{control/clientca.pem}
exist, L{ClientCertificates} gives a L{ClientTrust}, and contexts built for it ask every
client for a certificate (C{CERT_OPTIONAL}: a client without one is served as before) and
verify it against C{clientca.pem}, and against the CRLs of C{clientcrl.pem} if that exists.
A certificate the CA does not vouch for (or one revoked) fails the handshake, as OpenSSL's
C{SSL_VERIFY_PEER} does in qmail-tls.  All three files are looked at again at most once a
second, so edits take effect without a restart, like the certificate's.

Writes only in L{writeSelfSigned} (temp, fsync, rename); the PEM reaches the C{ssl} module
through an anonymous memory file.  Must not import protocols.
"""

import datetime
import os
import re
import ssl

from OpenSSL import SSL
from zope.interface import implementer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

from qmailtx import log
from qmailtx.safeio import writeAtomically

PEM_LIMIT = 1024 * 1024
"""Largest servercert.pem read: a key and a long chain are a few KiB."""

CONTEXT_CACHE_LIMIT = 16
"""Distinct cipher strings (from per-connection C{TLSCIPHERS}) kept with a built context."""

CLIENT_RECHECK = 1.0
"""Seconds a L{ClientTrust} serves new handshakes before its files are stat'ed again."""

EMAIL_LIMIT = 1024
"""Longest certificate email address considered (RFC 5321 paths are at most 256 bytes)."""

DEFAULT_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
"""TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all of that already)."""

_OPTIONS = (SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
            | getattr(SSL, "OP_NO_RENEGOTIATION", 0))

_SSL_OPTIONS = (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                | getattr(ssl, "OP_NO_RENEGOTIATION", 0))

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


class TLSSetupError(Exception):
    """No usable context: the reason goes into C{454 TLS <reason> (#4.3.0)}."""


def _pemBlocks(pem):
    keys, certs = [], []
    for match in _BLOCK.finditer(pem):
        kind = match.group(1)
        if kind.endswith(b"PRIVATE KEY"):
            keys.append(match.group(0))
        elif kind in (b"CERTIFICATE", b"TRUSTED CERTIFICATE"):
            certs.append(match.group(0))
    return keys, certs


def buildContext(pem, ciphers=None):
    """
    An C{SSL.Context} serving the key and chain in C{pem} (bytes); raises L{TLSSetupError}
    if the PEM lacks a key or certificate, they do not match, or C{ciphers} selects nothing.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    keys, certs = _pemBlocks(pem)
    if not keys or not certs:
        raise TLSSetupError(b"missing key or certificate")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_OPTIONS)
    try:
        ctx.use_privatekey(load_pem_private_key(keys[0], None))
        ctx.use_certificate(x509.load_pem_x509_certificate(certs[0]))
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(x509.load_pem_x509_certificate(extra))
        ctx.check_privatekey()
    except (ValueError, TypeError, SSL.Error):
        raise TLSSetupError(b"unable to load certificate")
    try:
        ctx.set_cipher_list(ciphers or DEFAULT_CIPHERS)
    except SSL.Error:
        raise TLSSetupError(b"cipher list selects no cipher")
    ctx.set_session_id(b"qmailtx")
    return ctx


def _noPassphrase(*args):
    """An encrypted key is refused, never prompted for on a terminal."""
    return b""


def buildSSLContext(pem, ciphers=None, trust=None):
    """
    An C{ssl.SSLContext} serving the first key and the certificate chain in C{pem} (bytes),
    with the policy of L{buildContext}; raises L{TLSSetupError} as it does.  With a
    L{ClientTrust}, it also requests and verifies client certificates.
    """
    keys, certs = _pemBlocks(pem)
    if not keys or not certs:
        raise TLSSetupError(b"missing key or certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _SSL_OPTIONS
    fd = os.memfd_create("servercert.pem", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(b"\n".join([keys[0]] + certs) + b"\n")
        ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=_noPassphrase)
    except (OSError, ssl.SSLError, ValueError):
        raise TLSSetupError(b"unable to load certificate")
    finally:
        os.close(fd)
    try:
        ctx.set_ciphers((ciphers or DEFAULT_CIPHERS).decode("ascii", "replace"))
    except ssl.SSLError:
        raise TLSSetupError(b"cipher list selects no cipher")
    if trust is not None:
        trust.apply(ctx)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS server side of one PEM file, whose contexts follow the file: the creator of
    L{qmailtx.tlstransport} sessions (L{serverObject}) and a pyOpenSSL connection creator for
    Twisted's C{startTLS} and C{TLSMemoryBIOFactory}.  The cipher string chosen by the last
    L{sslContext} or L{context} call applies to the next connection made.

    @ivar path: the PEM file (str).
    """

    def __init__(self, path):
        self.path = path
        self._ident = None
        self._pem = None
        self._contexts = {}
        self._sslContexts = {}
        self._selected = None

    def _readIfChanged(self):
        """Load the PEM again if its inode, size or times changed; keep the old one if bad."""
        try:
            st = os.stat(self.path)
            ident = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
            if ident == self._ident:
                return
            with open(self.path, "rb") as f:
                pem = f.read(PEM_LIMIT + 1)
            self._ident = ident
            if len(pem) > PEM_LIMIT:
                raise TLSSetupError(b"certificate file too large")
            if pem == self._pem:
                return
            buildSSLContext(pem)
            buildContext(pem)
        except (OSError, TLSSetupError) as e:
            if isinstance(e, OSError):
                e = TLSSetupError(b"unable to read certificate: "
                                  + (e.strerror or "error").encode())
            if self._pem is None:
                self._ident = None
                raise e
            log.warning(f"tls: {self.path} is not usable, keeping the previous one: "
                        f"{e.args[0].decode()}")
            return
        self._pem = pem
        self._contexts = {}
        self._sslContexts = {}

    def _cached(self, kind, build, ciphers, trust=None):
        self._readIfChanged()
        cache = getattr(self, kind)
        key = (ciphers, None if trust is None else trust.contextKey)
        ctx = cache.get(key)
        if ctx is None:
            if trust is None:
                ctx = build(self._pem, ciphers)
            else:
                ctx = build(self._pem, ciphers, trust)
            if len(cache) >= CONTEXT_CACHE_LIMIT:
                cache.clear()
            cache[key] = ctx
        self._selected = (ciphers, trust)
        return ctx

    def context(self, ciphers=None):
        """
        The current pyOpenSSL C{SSL.Context} for C{ciphers} (bytes or C{None} for the
        default), after re-reading the PEM if it changed; raises L{TLSSetupError}.  It never
        asks for a client certificate.
        """
        return self._cached("_contexts", buildContext, ciphers)

    def sslContext(self, ciphers=None, trust=None):
        """
        The current C{ssl.SSLContext} for C{ciphers}, as L{context} is for pyOpenSSL; with a
        L{ClientTrust}, one that requests and verifies client certificates by it.
        """
        return self._cached("_sslContexts", buildSSLContext, ciphers, trust)

    def serverObject(self, incoming, outgoing):
        """An C{ssl.SSLObject} for one connection over two C{ssl.MemoryBIO}s."""
        selected, self._selected = self._selected, None
        ctx = self.sslContext(*(selected or ()))
        self._selected = None
        return ctx.wrap_bio(incoming, outgoing, server_side=True)

    def serverConnectionForTLS(self, protocol):
        selected, self._selected = self._selected, None
        ctx = self.context(selected[0] if selected else None)
        self._selected = None
        return SSL.Connection(ctx, None)


class ContextCache:
    """One L{ServerTLS} per PEM path, so every connection of a listener shares the contexts."""

    def __init__(self):
        self._byPath = {}

    def get(self, path):
        tls = self._byPath.get(path)
        if tls is None:
            tls = self._byPath[path] = ServerTLS(path)
        return tls


def certificateEmails(peercert):
    """
    The email addresses of a verified certificate as C{ssl.SSLObject.getpeercert()} gives
    it (a dict; empty when nothing was verified): subject C{emailAddress} first, then
    C{rfc822Name} subjectAltNames, as bytes, in certificate order.
    """
    found = []
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "emailAddress":
                found.append(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "email":
            found.append(value)
    return [v.encode("utf-8", "surrogateescape") for v in found
            if isinstance(v, str) and 0 < len(v) <= EMAIL_LIMIT]


class ClientTrust:
    """
    One state of C{tlsclients}, C{clientca.pem} and C{clientcrl.pem}: what a context needs to
    verify client certificates, and which verified addresses may relay.

    @ivar caPath: C{clientca.pem} (str).
    @ivar crlPath: C{clientcrl.pem} (str), or C{None} if it does not exist.
    @ivar clients: the lowercased lines of C{tlsclients} (frozenset of bytes).
    @ivar contextKey: what a context built for this trust depends on (paths and their stat
        identities), so a changed CA or CRL file gets a new context.
    """

    def __init__(self, caPath, crlPath, clients, contextKey):
        self.caPath = caPath
        self.crlPath = crlPath
        self.clients = clients
        self.contextKey = contextKey

    def apply(self, ctx):
        """
        Make C{ctx} (an C{ssl.SSLContext}) request and verify client certificates.  A CA or
        CRL file that cannot be loaded is logged and the context asks for nothing, so a bad
        edit stops certificate relaying but not STARTTLS.
        """
        try:
            ctx.load_verify_locations(cafile=self.caPath)
            if self.crlPath is not None:
                ctx.load_verify_locations(cafile=self.crlPath)
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (OSError, ssl.SSLError, ValueError) as e:
            log.warning(f"tls: client certificates not requested: {self.caPath} or "
                        f"{self.crlPath}: {e}")
            return
        ctx.verify_mode = ssl.CERT_OPTIONAL

    def relayEmail(self, peercert):
        """The first address of C{peercert} listed in C{tlsclients} (any case), or C{None}."""
        for email in certificateEmails(peercert):
            if email.lower() in self.clients:
                return email
        return None


def _statIdent(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


class ClientCertificates:
    """
    Whether, and by what, client certificates are checked now: the L{ClientTrust} of a
    control directory, looked at again at most every L{CLIENT_RECHECK} seconds.

    @ivar controls: a L{qmailtx.control.ControlDir}.
    """

    def __init__(self, controls, clock, recheck=CLIENT_RECHECK):
        self.controls = controls
        self.clock = clock
        self.recheck = recheck
        self._trust = None
        self._checkedAt = None

    def current(self):
        """
        The current L{ClientTrust}, or C{None} when C{tlsclients} or C{clientca.pem} is
        missing; raises L{qmailtx.control.ControlError} if C{tlsclients} cannot be read.
        """
        now = self.clock.seconds()
        if self._checkedAt is not None and now - self._checkedAt < self.recheck:
            return self._trust
        clients = self.controls.lowerSet("tlsclients")
        trust = None
        if clients is not None:
            caPath = os.path.join(self.controls.path, "clientca.pem")
            crlPath = os.path.join(self.controls.path, "clientcrl.pem")
            caIdent, crlIdent = _statIdent(caPath), _statIdent(crlPath)
            if caIdent is not None:
                key = (caPath, caIdent, crlIdent)
                old = self._trust
                if old is not None and old.contextKey == key and old.clients == clients:
                    trust = old
                else:
                    trust = ClientTrust(caPath, None if crlIdent is None else crlPath,
                                        clients, key)
        self._trust = trust
        self._checkedAt = now
        return trust


def selfSignedPEM(hostname, now=None, days=3650):
    """
    A new P-256 key and a self-signed certificate for C{hostname} (bytes), as one PEM: what
    C{qmailtx init} installs so STARTTLS works before a real certificate is bought.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    name = hostname.decode("ascii", "replace")
    key = ec.generate_private_key(ec.SECP256R1())
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)


def writeSelfSigned(path, hostname):
    """Install L{selfSignedPEM} at C{path}, mode 0600 (it holds the private key)."""
    writeAtomically(path, selfSignedPEM(hostname), 0o600)
