"""
The POP3 server protocol: line framing, one command in flight, the checkpassword call that
moves a connection from AUTHORIZATION (L{qmailtx.popup}) to TRANSACTION/UPDATE
(L{qmailtx.pop3d}), and the listener's factory (spec/pop3.md §1–3, §5).

Moves bytes and keeps per-session state only; all mailbox access goes through a mailbox
object from L{qmailtx.pop3box} (in this process, or in a process running as the mailbox
owner).  Writes nothing itself; must not import control files, the queue or uid switching.
"""

import itertools
import os
import time
from dataclasses import dataclass, field

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from qmailtx import checkpassword
from qmailtx.maildirscan import NoMaildir, ScanError
from qmailtx.pop3d import Pop3d
from qmailtx.popup import OK, Popup
from qmailtx.results import TempFailure
from qmailtx.tls import TLSSetupError

_log = Logger(namespace="qmailtx.pop3")

IDLE_TIMEOUT = 1200
"""qmail-popup/qmail-pop3d's read/write timeout (seconds)."""

LINE_LIMIT = 4096
"""Longest command line kept; RFC 2449 asks 255 for commands, SASL responses run longer."""

PENDING_LIMIT = 65536
"""Pipelined input buffered while a command is in flight before we stop reading."""

# Replies wait unsent up to the transport's own buffer size (Twisted's FileDescriptor
# bufferSize, 64 KiB) plus one command's reply: beyond it the transport pauses us, its
# producer, and we act on no further command until it resumes us, as qmail-pop3d's
# blocking write stalls only the client that does not read.  Commands then pile up
# unread, and past PENDING_LIMIT we stop reading.  (Reading is not stopped at the pause
# itself: under POP3S, Twisted's TLS layer pauses its producer while it holds the greeting
# back for the handshake, and a stopped read would stall that handshake for ever.)

ERR_AUTH_FAILED = b"-ERR authorization failed"
ERR_NO_MAILDIR = b"-ERR this user has no $HOME/Maildir"
ERR_SCAN = b"-ERR unable to scan $HOME/Maildir"


@dataclass
class POP3Config:
    """
    What one POP3 listener needs.

    @ivar checkpassword: argv (bytes) of a checkpassword-interface program.
    @ivar mailboxes: opener with C{open(authenticated, maildirName) -> Deferred(mailbox)}.
    @ivar tlsContext: server context factory for STLS, or C{None}.
    @ivar checker: L{checkpassword.checkPassword} or a stand-in with its signature.
    @ivar refuseRoot: refuse a checker that leaves us at uid 0 (qmail-pop3d [nq 1.08]).
    @ivar commits: the site's L{qmailtx.commits.Commits}, so that a stop lets a QUIT's
        UPDATE finish and answer, or C{None}.
    """

    hostname: bytes
    checkpassword: list
    mailboxes: object
    maildirName: bytes = b"Maildir"
    tlsContext: object = None
    tlsRequired: bool = False
    cramMD5: bool = False
    refuseRoot: bool = field(default_factory=lambda: os.getuid() == 0)
    checkTimeout: float = checkpassword.CHECK_TIMEOUT
    timeout: float = IDLE_TIMEOUT
    checker: object = checkpassword.checkPassword
    commits: object = None


class POP3Server(Popup, Pop3d, protocol.Protocol, TimeoutMixin):
    """One POP3 connection, from greeting to close."""

    state = "authorization"
    tlsActive = False
    mailbox = None
    env = None
    _busy = False
    _outputFull = False
    _readStopped = False
    _registered = False
    _checking = None
    sender = None

    def __init__(self, config, reactor, serial=0):
        self.config = config
        self.reactor = reactor
        self.serial = serial
        self._buffer = b""

    def callLater(self, *a, **kw):
        return self.reactor.callLater(*a, **kw)

    def connectionMade(self):
        self.tlsActive = self.tlsActive or getattr(self.factory, "implicitTLS", False)
        if self.env is None:
            self.env = getattr(self.transport, "env", None)
        self.timestamp = b"<%d.%d@%s>" % (self.serial, int(self.reactor.seconds()),
                                          self.config.hostname)
        self.transport.registerProducer(self, True)
        self._registered = True
        self.setTimeout(self.config.timeout)
        self.reply(b"+OK " + self.timestamp)

    def timeoutConnection(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.state = "closed"
        self._buffer = b""
        if self._checking is not None:
            # Kill the checker: a client that hangs up must not leave it running, or
            # --maxconn would bound sessions but not checkers.
            checking, self._checking = self._checking, None
            checking.cancel()
        if self.mailbox is not None:
            self.mailbox.release()
            self.mailbox = None

    # -- flow control (we are our own transport's producer) -------------------

    def pauseProducing(self):
        """The client is not reading our replies: act on no more of its commands, and
        pause the message being sent."""
        self._outputFull = True
        if self.sender is not None:
            self.sender.pauseProducing()

    def resumeProducing(self):
        self._outputFull = False
        if self.sender is not None:
            self.sender.resumeProducing()
        self._process()

    def stopProducing(self):
        if self.sender is not None:
            self.sender.stopProducing()

    def _readIfRoom(self):
        """Read from the client unless PENDING_LIMIT of its input waits unprocessed."""
        if self.state == "closed":
            return
        full = len(self._buffer) > PENDING_LIMIT
        if full and not self._readStopped:
            self._readStopped = True
            self.transport.pauseProducing()
        elif not full and self._readStopped:
            self._readStopped = False
            self.transport.resumeProducing()

    def reply(self, line):
        self.transport.write(line + b"\r\n")

    def replyLines(self, first, lines):
        self.transport.write(b"\r\n".join([first] + list(lines) + [b".", b""]))

    def close(self):
        self.state = "closed"
        self._buffer = b""
        if self._registered:
            # A TLS transport would wait for its producer before closing.
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self.state == "closed":
            return
        self._buffer += data
        self._process()

    def _process(self):
        while not (self._busy or self._outputFull) and self.state != "closed":
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > LINE_LIMIT:
                    return self.close()
                break
            if end > LINE_LIMIT:
                return self.close()
            line = self._buffer[:end]
            self._buffer = self._buffer[end + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            nul = line.find(b"\0")
            if nul >= 0:
                # qmail-popup and qmail-pop3d parse a command as a C string: it ends at the
                # NUL, so a client cannot choose the checkpassword fields that follow one.
                line = line[:nul]
            self.resetTimeout()
            if self.state == "authorization":
                self.authorizationLine(line)
            else:
                self.transactionLine(line)
        self._readIfRoom()

    def _hold(self):
        self._busy = True

    def _release(self):
        self._busy = False
        if self.state == "closed":
            return
        self.resetTimeout()
        self._process()

    def tlsProblem(self):
        """
        Why STLS cannot start now, or C{None}.  The certificate is read when used and can
        go missing or bad after start-up: a handshake begun without one would leave the
        connection half-switched and never closed, its slot lost.  (A context built once,
        not from a file, cannot go bad.)
        """
        current = getattr(self.config.tlsContext, "context", None)
        if current is None:
            return None
        try:
            current()
        except TLSSetupError as e:
            return e.args[0]
        return None

    def startTLS(self):
        self._buffer = b""
        self.transport.startTLS(self.config.tlsContext)
        self.tlsActive = True

    def authenticate(self, login, password, challenge):
        """The one checkpassword call of this connection; it ends in TRANSACTION or a close."""
        self._hold()
        self.state = "checking"
        env = {}
        for key, value in (self.env or {}).items():
            env[key if isinstance(key, bytes) else key.encode()] = (
                value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape"))
        d = self.config.checker(self.reactor, self.config.checkpassword, login,
                                password, challenge, self.config.checkTimeout, env)
        self._checking = d
        d.addBoth(self._checked)
        d.addCallback(self._cbChecked)
        d.addCallback(self._cbOpened)
        d.addErrback(self._ebLogin)

    def _checked(self, result):
        self._checking = None
        return result

    def _cbChecked(self, who):
        if self.state == "closed":
            return None
        if self.config.refuseRoot and who.uid == 0:
            _log.warn("qmail-pop3d invoked as uid 0, terminating")
            raise checkpassword.Refused(checkpassword.AUTH_FAILED, 1)
        return self.config.mailboxes.open(who, self.config.maildirName)

    def _cbOpened(self, mailbox):
        if mailbox is None:
            return
        if self.state == "closed":
            mailbox.release()
            return
        self.mailbox = mailbox
        self.messages = mailbox.messages
        self.deleted = bytearray(len(self.messages))
        self.last = 0
        self.state = "transaction"
        self.reply(OK)
        self._release()

    def _ebLogin(self, failure):
        if self.state == "closed":
            return
        error = failure.value
        if isinstance(error, NoMaildir):
            text = ERR_NO_MAILDIR
        elif isinstance(error, ScanError):
            text = ERR_SCAN
        elif isinstance(error, TempFailure) and error.text != checkpassword.NO_REPORT:
            text = b"-ERR " + error.text
        elif isinstance(error, checkpassword.Refused) or isinstance(error, TempFailure):
            text = ERR_AUTH_FAILED
        else:
            _log.failure("POP3 login", failure)
            text = ERR_SCAN
        self.reply(text)
        self.close()


def greetingSerials(clock=time.time):
    """
    Greeting serials (the C{PID} of C{<PID.UNIXTIME@HOST>}), counting from the clock in
    microseconds: no process issues a million greetings a second, so a daemon started
    later counts from above whatever an earlier one reached, and a restart within the same
    second repeats no timestamp (RFC 1939 §7: every greeting's must differ).
    """
    return itertools.count(int(clock() * 1000000))


_greetingSerials = None
"""The process's serials, shared by every POP3 and POP3S listener (L{POP3Factory})."""


def _nextSerial():
    global _greetingSerials
    if _greetingSerials is None:
        _greetingSerials = greetingSerials()
    return next(_greetingSerials)


class POP3Factory(protocol.Factory):
    """
    Builds L{POP3Server}s for one listener.  C{implicitTLS} marks a POP3S listener (TLS is
    already active when the protocol starts).  Greeting serials come from one counter per
    process, so two listeners never hand out the same APOP timestamp.
    """

    busyReply = b"-ERR too many connections\r\n"

    def __init__(self, config, reactor, implicitTLS=False):
        self.config = config
        self.reactor = reactor
        self.implicitTLS = implicitTLS

    def buildProtocol(self, addr):
        p = POP3Server(self.config, self.reactor, _nextSerial())
        p.factory = self
        return p


def serverTLSContext(pemPath):
    """
    A server context from one PEM file holding key and certificate (qmail-tls's
    control/servercert.pem), TLS 1.2 or later.
    """
    from twisted.internet import ssl

    with open(pemPath, "rb") as f:
        pem = f.read()
    cert = ssl.PrivateCertificate.loadPEM(pem)
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original, certificate=cert.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def buildFactory(site, options, implicitTLS=False):
    """
    The factory for one C{--pop3}/C{--pop3s} listener of C{twistd qmail}: host name from
    control/me, TLS from control/servercert.pem, mailboxes served by owner workers when we
    run as root, else by this process.  One set of mailboxes per site, so caches are shared.
    """
    import shlex

    from qmailtx import pop3box

    mailboxes = getattr(site, "pop3Mailboxes", None)
    if mailboxes is None:
        if os.getuid() == 0:
            mailboxes = pop3box.OwnerMailboxes(site.reactor)
        else:
            mailboxes = pop3box.LocalMailboxes(site.reactor)
        site.pop3Mailboxes = mailboxes
    tlsContext = None
    certPath = os.path.join(site.controls.path, "servercert.pem")
    if os.path.exists(certPath):
        from qmailtx.tls import ServerTLS

        tlsContext = ServerTLS(certPath)
    hostname = site.controls.me()
    if isinstance(hostname, str):
        hostname = hostname.encode()
    config = POP3Config(
        hostname=hostname or b"localhost",
        checkpassword=[os.fsencode(w) for w in shlex.split(options["checkpassword"])],
        mailboxes=mailboxes,
        maildirName=os.fsencode(options.get("maildirname") or "Maildir"),
        tlsContext=tlsContext,
        tlsRequired=bool(options.get("pop3-tls-required")),
        commits=site.commits,
    )
    factory = POP3Factory(config, site.reactor, implicitTLS=implicitTLS)
    if not implicitTLS:
        return factory
    if tlsContext is None:
        raise ValueError("--pop3s needs control/servercert.pem")
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(tlsContext, False, factory)
