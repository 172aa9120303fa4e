"""
The STARTTLS/SMTPS and SMTP AUTH side of the SMTP session (spec/smtp.md §7–8), as mixins
for L{qmailtx.smtp.SMTPServer} and L{qmailtx.smtpfactory.SMTPFactory}.

Owns: the TLS switch (discarding plaintext pipelined behind STARTTLS and resetting HELO,
transaction and AUTH, so no command crosses the switch), implicit TLS before the banner,
the AUTH verb and its exchange lines, the checkpassword call (input held meanwhile, like a
DATA commit), the delayed C{535}, and what a login or a listed client certificate changes
(relaying, TCPREMOTEINFO, the Received PROTO: C{ESMTPS (<cipher> encrypted)}, C{ESMTPSA}
after AUTH, and C{\n  (cert <email>)} when a certificate allowed relaying).  Pure rules come
from L{qmailtx.smtpauth}; contexts and client-certificate trust from L{qmailtx.tls}; the TLS
layer from L{qmailtx.tlstransport}.  Writes nothing; must not import the queue or read
control files beyond C{tlsserverciphers} and, through L{qmailtx.tls.ClientCertificates},
C{tlsclients}.
"""

import functools
import itertools
import os

from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from qmailtx import checkpassword as cpw, log, smtpauth
from qmailtx.control import ControlError
from qmailtx.results import TempFailure
from qmailtx.tls import ClientCertificates, ContextCache, TLSSetupError, certificateEmails
from qmailtx.tlstransport import startTLS, tlsInfo

STARTTLS_ARGUMENT = b"501 Syntax error (no parameters allowed) (#5.5.4)"
UNIMPLEMENTED = b"502 unimplemented (#5.5.1)"
READY = b"220 ready for tls"

_COMMENT_SAFE = bytes(b if 32 < b < 127 and b not in b"()\\;" else 63 for b in range(256))
"""Bytes of a cipher name or certificate address kept in the Received line's PROTO comment
(underscores and the characters of addresses, but no space, control byte, parenthesis,
backslash or the C{;} before the date); others become C{?}."""

HANDSHAKE_TIMEOUT = 60
"""Seconds a TLS handshake may take (capped by timeoutsmtpd).  Until it completes nothing
can be written: the TLS layer would buffer it and pause us, and a stalled client would hold
the connection forever."""


class SecureFactory:
    """
    Listener-wide TLS and AUTH settings; the service sets them after construction.

    @ivar defaultEnv: variables a connection gets unless its rules set them (a submission
        listener has C{SMTPAUTH="!"}, an SMTPS one also C{SMTPS="1"}).
    @ivar checkpassword: argv (bytes) of the checkpassword program, or C{None}: no AUTH.
    @ivar checker: L{qmailtx.checkpassword.checkPassword} or a stand-in with its signature.
    @ivar authThrottle: a L{smtpauth.AuthThrottle}, shared by the listeners of one site.
    """

    defaultEnv = {}
    checkpassword = None
    checker = staticmethod(functools.partial(cpw.checkPassword, report=False))
    checkTimeout = cpw.CHECK_TIMEOUT
    authThrottle = None
    tlsContexts = None
    clientCertificates = None

    def serverTLS(self, path):
        if self.tlsContexts is None:
            self.tlsContexts = ContextCache()
        return self.tlsContexts.get(path)

    def clientTrust(self):
        """
        The L{qmailtx.tls.ClientTrust} for the next handshake, or C{None}: no client
        certificate is asked for.  Raises L{ControlError}.
        """
        if self.clientCertificates is None:
            self.clientCertificates = ClientCertificates(self.controlDir, self.clock)
        return self.clientCertificates.current()

    def throttle(self):
        if self.authThrottle is None:
            self.authThrottle = smtpauth.AuthThrottle(self.clock)
        return self.authThrottle

    def nextSerial(self):
        """
        The PID part of CRAM-MD5 challenges: unique within this process, whose listeners
        (smtp, submission, smtps) share one checkpassword, so that a response seen on one
        cannot be replayed on another in the same second.
        """
        global _serials
        if _serials is None:
            _serials = itertools.count(os.getpid() * 100000)
        return next(_serials)


_serials = None
"""The process's CRAM-MD5 serials (L{SecureFactory.nextSerial})."""


@implementer(IHandshakeListener)
class SecureSession:
    """
    TLS and AUTH state of one session.  The host provides C{env}, C{controls}, C{factory},
    C{transport}, C{reply}, C{send}, C{_flushReplies}, C{_block}/C{_unblock},
    C{_resetTransaction}, C{sender}, C{helo}, C{relayclient}, C{_buffer} and C{_isClosed()},
    and calls L{securityLost} when its connection is lost.
    """

    _checking = None
    _waiting = None

    tlsActive = False
    authUser = None
    authPolicy = None
    authRequired = False
    sasl = None
    authFailures = 0
    _plainEnv = None
    _handshakeTimer = None
    _banner = None
    _trust = None
    tls = None
    certEmail = None

    def startSecurity(self):
        """
        Apply the listener's default env, decide AUTH, and start implicit TLS (env C{SMTPS})
        so that the banner is the first thing said under encryption.
        @return: C{False} if the connection was dropped instead.
        """
        env = self.env
        for name, value in self.factory.defaultEnv.items():
            env.setdefault(name, value)
        policy = smtpauth.authPolicy(env.get("SMTPAUTH"))
        if policy is not None:
            self.authRequired = policy.required
            if self.factory.checkpassword is not None:
                self.authPolicy = policy
        if not env.get("SMTPS"):
            return True
        try:
            creator = self._tlsCreator()
        except TLSSetupError as e:
            log.warning(f"smtp: SMTPS without TLS, dropping connection: {e.args[0].decode()}")
            self._close()
            return False
        self._startTLS(creator)
        return True

    def greet(self, banner):
        """Send the 220 banner, or keep it for the end of an SMTPS handshake."""
        if self._handshakeTimer is not None:
            self._banner = banner
        else:
            self.send(banner)

    def _startTLS(self, creator):
        self.tlsActive = True
        startTLS(self, creator)
        self._handshakeTimer = self.factory.clock.callLater(
            min(self.timeout, HANDSHAKE_TIMEOUT), self._handshakeTimedOut)

    def handshakeCompleted(self):
        timer, self._handshakeTimer = self._handshakeTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._isClosed():
            return
        self.tls = tlsInfo(self.transport)
        trust, self._trust = self._trust, None
        if trust is not None and self.tls is not None:
            self._checkClientCertificate(trust, self.tls.peerCertificate)
        banner, self._banner = self._banner, None
        if banner is not None:
            self.transport.write(banner)

    def _checkClientCertificate(self, trust, peer):
        """
        A verified certificate whose address C{tlsclients} lists makes the session a relay
        client (qmail-tls: only if it was not one already, so the cert is named in the
        Received line only when it is what allowed relaying).
        """
        if not peer:
            return
        ip = self.env.get("TCPREMOTEIP", "unknown")
        email = trust.relayEmail(peer)
        if email is None:
            names = b",".join(certificateEmails(peer)) or b"no address"
            log.event(f"smtp: tls client cert {log.logsafe(names)} not in tlsclients "
                      f"from {ip}")
            return
        if self.relayclient is not None:
            return
        if self._plainEnv is None:
            self._plainEnv = dict(self.env)
        self.env["RELAYCLIENT"] = ""
        self.relayclient = b""
        self.certEmail = email
        log.event(f"smtp: tls client cert {log.logsafe(email)} relaying from {ip}"
                  f"{self._tlsDetail()}")

    def _tlsDetail(self):
        """C{ (TLSv1.3 TLS_AES_256_GCM_SHA384)} for log lines of a TLS session, else empty."""
        if self.tls is None:
            return ""
        return f" ({self.tls.version} {self.tls.cipher})"

    def _handshakeTimedOut(self):
        self._handshakeTimer = None
        if not self._isClosed():
            log.event(f"smtp: TLS handshake timed out with "
                      f"{self.env.get('TCPREMOTEIP', 'unknown')}")
            self._close()
            self.transport.abortConnection()

    def _tlsCreator(self):
        """The connection creator for this session; raises L{TLSSetupError}."""
        path = self.controls.tlsCert
        if path is None:
            raise TLSSetupError(b"missing certificate")
        ciphers = self.env.get("TLSCIPHERS")
        if ciphers:
            ciphers = ciphers.encode("utf-8", "surrogateescape")
        else:
            try:
                ciphers = self.factory.controlDir.line("tlsserverciphers")
            except ControlError:
                raise TLSSetupError(b"unable to read control/tlsserverciphers")
        try:
            trust = self.factory.clientTrust()
        except ControlError:
            raise TLSSetupError(b"unable to read control/tlsclients")
        creator = self.factory.serverTLS(path)
        creator.sslContext(ciphers or None, trust)
        self._trust = trust
        return creator

    def _authOffered(self):
        return self.authPolicy is not None and (
            self.tlsActive or smtpauth.plaintextAuthAllowed(self.env))

    def ehloTLSLines(self):
        """EHLO lines right after the greeting: STARTTLS while it can still be used."""
        if self.tlsActive or self.controls.tlsCert is None:
            return b""
        return b"250-STARTTLS\r\n"

    def ehloAuthLines(self):
        if not self._authOffered():
            return b""
        return self.authPolicy.ehloLine() + b"\r\n"

    def mailRefused(self):
        """The reply refusing MAIL for want of AUTH, or C{None}."""
        if self.authRequired and self.authUser is None:
            return smtpauth.REQUIRED
        return None

    def proto(self):
        """
        What follows C{with} in the Received line: SMTP or ESMTPA in plaintext; under TLS
        qmail-tls's C{ESMTPS (<cipher> encrypted)}, C{ESMTPSA (...)} after AUTH (the user is
        in the C{(user@IP)} part), and C{\n  (cert <email>)} after a relaying certificate.
        """
        if not self.tlsActive:
            return b"ESMTPA" if self.authUser is not None else b"SMTP"
        proto = b"ESMTPSA" if self.authUser is not None else b"ESMTPS"
        if self.tls is not None and self.tls.cipher:
            cipher = self.tls.cipher.encode("ascii", "replace")
            proto += b" (" + cipher.translate(_COMMENT_SAFE) + b" encrypted)"
        if self.certEmail is not None:
            proto += b"\n  (cert " + self.certEmail.translate(_COMMENT_SAFE) + b")"
        return proto

    # -- STARTTLS ------------------------------------------------------------

    def do_STARTTLS(self, arg):
        if self.tlsActive or self.controls.tlsCert is None:
            return self.reply(UNIMPLEMENTED)
        if arg:
            return self.reply(STARTTLS_ARGUMENT)
        try:
            creator = self._tlsCreator()
        except TLSSetupError as e:
            log.warning(f"smtp: STARTTLS refused, 454: {e.args[0].decode()}")
            return self.reply(b"454 TLS " + e.args[0] + b" (#4.3.0)")
        self.reply(READY)
        self._flushReplies()
        self._buffer = b""
        self._resetSession()
        self._startTLS(creator)

    def _resetSession(self):
        """Forget everything said in plaintext: HELO, the transaction, AUTH."""
        self._resetTransaction()
        self.helo = None
        self.sasl = None
        if self._plainEnv is not None:
            self.env.clear()
            self.env.update(self._plainEnv)
            self._plainEnv = None
            relay = self.env.get("RELAYCLIENT")
            self.relayclient = None if relay is None else relay.encode("utf-8", "surrogateescape")
        self.authUser = None

    # -- AUTH ----------------------------------------------------------------

    def do_AUTH(self, arg):
        if self.authPolicy is None:
            return self.reply(smtpauth.NOT_AVAILABLE)
        if not self._authOffered():
            return self.reply(smtpauth.NEEDS_TLS)
        if self.authUser is not None:
            return self.reply(smtpauth.ALREADY)
        if self.sender is not None:
            return self.reply(smtpauth.IN_TRANSACTION)
        local = self.env.get("TCPLOCALHOST") or self.env.get("TCPLOCALIP") or "unknown"
        challenge = smtpauth.cramChallenge(self.factory.nextSerial(),
                                           self.factory.clock.seconds(),
                                           local.encode("utf-8", "surrogateescape"))
        step, exchange = smtpauth.startExchange(arg, self.authPolicy, challenge)
        self._authStep(step, exchange)

    def saslLine(self, line):
        """A client line inside an AUTH exchange (never a command)."""
        self._authStep(self.sasl.respond(line), self.sasl)

    def _authStep(self, step, exchange):
        if isinstance(step, smtpauth.Challenge):
            self.sasl = exchange
            return self.reply(step.line)
        self.sasl = None
        if isinstance(step, smtpauth.Done):
            return self.reply(step.line)
        self._block()
        self._admit(step)

    def _admit(self, step):
        """Check C{step}'s credentials once the throttle lets this address have a check."""
        self._waiting = None
        if self._isClosed():
            return
        ip = self.env.get("TCPREMOTEIP", "unknown")
        throttle = self.factory.throttle()
        wait = throttle.admit(ip)
        if wait:
            self._waiting = self.factory.clock.callLater(wait, self._admit, step)
            return
        throttle.started(ip)
        env = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in self.env.items()}
        d = self._checking = self.factory.checker(
            self.factory.clock, self.factory.checkpassword, step.user, step.password,
            step.challenge, self.factory.checkTimeout, env)
        d.addCallbacks(self._cbAuth, self._ebAuth, callbackArgs=(step.user,),
                       errbackArgs=(step.user,))

    def securityLost(self):
        """The connection is gone: a checker still running is killed, so that --maxconn
        bounds checkers as it bounds sessions, and a check still waiting is dropped."""
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.active():
            waiting.cancel()

    def _cbAuth(self, who, user):
        self._checking = None
        if self._isClosed():
            return
        env = self.env
        if self._plainEnv is None:
            self._plainEnv = dict(env)
        text = user.decode("utf-8", "surrogateescape")
        env["RELAYCLIENT"] = ""
        env["TCPREMOTEINFO"] = text
        env["SMTPAUTHUSER"] = text
        self.relayclient = b""
        self.authUser = user
        log.event(f"smtp: auth ok {log.logsafe(user)} from {env.get('TCPREMOTEIP', 'unknown')}"
                  f"{self._tlsDetail()}")
        self.reply(smtpauth.AUTH_OK)
        self._unblock()

    def _ebAuth(self, failure, user):
        self._checking = None
        if self._isClosed():
            return
        error = failure.value
        ip = self.env.get("TCPREMOTEIP", "unknown")
        if isinstance(error, cpw.Refused):
            self.authFailures += 1
            delay = self.factory.throttle().failed(ip, self.authFailures)
            log.event(f"smtp: auth failed {log.logsafe(user)} from {ip}")
            self.factory.clock.callLater(delay, self._authAnswer, smtpauth.FAILED)
            return
        if isinstance(error, TempFailure) and error.text == cpw.NO_FORK:
            text = smtpauth.CHILD_WONT_START
        else:
            text = smtpauth.CHILD_PROBLEM
        log.warning(f"smtp: auth: checkpassword: {failure.getErrorMessage()}")
        self._authAnswer(text)

    def _authAnswer(self, text):
        if self._isClosed():
            return
        self.reply(text)
        self._unblock()
