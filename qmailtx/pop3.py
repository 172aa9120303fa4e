"""
The POP3 server protocol: line framing, the AUTHORIZATION state (L{qmailtx.popup}), the
checkpassword call, and qmail-pop3d's TRANSACTION/UPDATE states (spec/pop3.md §1–3, §5).

Moves bytes and keeps per-session state only; all mailbox access goes through a mailbox
object from L{qmailtx.pop3box} (in this process, or in a process running as the mailbox
owner).  Writes nothing itself; must not import control files, the queue or uid switching.
"""

import itertools
import operator
import os
import re
import time
from dataclasses import dataclass, field

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from qmailtx import checkpassword
from qmailtx.maildir import NoMaildir, ScanError, Transmitter, uidOf
from qmailtx.popup import ERR_SYNTAX, ERR_UNIMPLEMENTED, OK, Popup, splitCommand
from qmailtx.results import TempFailure

_log = Logger(namespace="qmailtx.pop3")

IDLE_TIMEOUT = 1200
"""qmail-popup/qmail-pop3d's read/write timeout (seconds)."""

LINE_LIMIT = 4096
"""Longest command line kept; RFC 2449 asks 255 for commands, SASL responses run longer."""

PENDING_LIMIT = 65536
"""Pipelined input buffered while a command is in flight before we stop reading."""

RETR_CHUNK = 65536
"""Bytes read from a message file per step while streaming RETR/TOP."""

ERR_AUTH_FAILED = b"-ERR authorization failed"
ERR_NO_MAILDIR = b"-ERR this user has no $HOME/Maildir"
ERR_SCAN = b"-ERR unable to scan $HOME/Maildir"
ERR_OPEN = b"-ERR unable to open that message"
ERR_UNLINK = b"-ERR unable to unlink all deleted messages"
ERR_COUNT_FROM_1 = b"-ERR messages are counted from 1"
ERR_TOO_MANY = b"-ERR not that many messages"
ERR_DELETED = b"-ERR already deleted"


@dataclass
class POP3Config:
    """
    What one POP3 listener needs.

    @ivar checkpassword: argv (bytes) of a checkpassword-interface program.
    @ivar mailboxes: opener with C{open(authenticated, maildirName) -> Deferred(mailbox)}.
    @ivar tlsContext: server context factory for STLS, or C{None}.
    @ivar checker: L{checkpassword.checkPassword} or a stand-in with its signature.
    @ivar refuseRoot: refuse a checker that leaves us at uid 0 (qmail-pop3d [nq 1.08]).
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


_name = operator.itemgetter(0)
_size = operator.itemgetter(1)
_inNew = re.compile(b"new/").match


def _uid(message):
    return uidOf(message[0])


def parseNumber(arg):
    """qmail's scan_ulong: (value, digits consumed); value C{None} when no digit leads."""
    n = 0
    while n < len(arg) and 48 <= arg[n] <= 57:
        n += 1
    return (int(arg[:n]) if n else None), n


class POP3Server(Popup, protocol.Protocol, TimeoutMixin):
    """One POP3 connection, from greeting to close."""

    state = "authorization"
    tlsActive = False
    mailbox = None
    env = None
    _busy = False
    _readPaused = False

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
        self.setTimeout(self.config.timeout)
        self.reply(b"+OK " + self.timestamp)

    def timeoutConnection(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.state = "closed"
        self._buffer = b""
        if self.mailbox is not None:
            self.mailbox.release()
            self.mailbox = None

    def reply(self, line):
        self.transport.write(line + b"\r\n")

    def replyLines(self, first, lines):
        self.transport.write(b"\r\n".join([first] + list(lines) + [b".", b""]))

    def close(self):
        self.state = "closed"
        self._buffer = b""
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self.state == "closed":
            return
        self._buffer += data
        self._process()

    def _process(self):
        while not self._busy and self.state != "closed":
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > LINE_LIMIT:
                    self.close()
                return
            if end > LINE_LIMIT:
                return self.close()
            line = self._buffer[:end]
            self._buffer = self._buffer[end + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            self.resetTimeout()
            if self.state == "authorization":
                self.authorizationLine(line)
            else:
                self.transactionLine(line)
        if self._busy and len(self._buffer) > PENDING_LIMIT and not self._readPaused:
            self._readPaused = True
            self.transport.pauseProducing()

    def _hold(self):
        self._busy = True

    def _release(self):
        self._busy = False
        if self.state == "closed":
            return
        self.resetTimeout()
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()
        self._process()

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
        d.addCallback(self._cbChecked)
        d.addCallback(self._cbOpened)
        d.addErrback(self._ebLogin)

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

    # TRANSACTION state (qmail-pop3d)

    def transactionLine(self, line):
        verb, arg = splitCommand(line)
        handler = self.TRANSACTION_VERBS.get(verb)
        if handler is None:
            return self.reply(ERR_UNIMPLEMENTED)
        return handler(self, arg)

    def msgno(self, arg):
        """Index of the message named by C{arg}, or C{None} after replying with the error."""
        n, _ = parseNumber(arg)
        if n is None:
            self.reply(ERR_SYNTAX)
        elif n == 0:
            self.reply(ERR_COUNT_FROM_1)
        elif n > len(self.messages):
            self.reply(ERR_TOO_MANY)
        elif self.deleted[n - 1]:
            self.reply(ERR_DELETED)
        else:
            return n - 1
        return None

    def _present(self, values):
        """C{values} (one per message) of the messages not marked deleted."""
        if not any(self.deleted):
            return values
        return itertools.compress(values, map(operator.not_, self.deleted))

    def t_STAT(self, arg):
        total = sum(self._present(map(_size, self.messages)))
        self.reply(b"+OK %d %d" % (len(self.messages), total))

    def _listing(self, arg, kind, value, line):
        if arg:
            i = self.msgno(arg)
            if i is not None:
                self.transport.write(b"+OK " + line % (i + 1, value(self.messages[i])))
            return
        replies = getattr(self.messages, "replies", None)
        untouched = replies is not None and not any(self.deleted)
        if untouched and kind in replies:
            return self.transport.write(replies[kind])
        rows = self._present(zip(range(1, len(self.messages) + 1), map(value, self.messages)))
        text = OK + b"\r\n" + b"".join(map(line.__mod__, rows)) + b".\r\n"
        if untouched:
            replies[kind] = text
        self.transport.write(text)

    def t_LIST(self, arg):
        self._listing(arg, b"LIST", _size, b"%d %d\r\n")

    def t_UIDL(self, arg):
        self._listing(arg, b"UIDL", _uid, b"%d %s\r\n")

    def t_DELE(self, arg):
        i = self.msgno(arg)
        if i is not None:
            self.deleted[i] = 1
            self.last = max(self.last, i + 1)
            self.reply(OK)

    def t_RSET(self, arg):
        self.deleted = bytearray(len(self.messages))
        self.last = 0
        self.reply(OK)

    def t_LAST(self, arg):
        self.reply(b"+OK %d" % self.last)

    def t_NOOP(self, arg):
        self.reply(OK)

    def t_TOP(self, arg):
        i = self.msgno(arg)
        if i is None:
            return
        _, used = parseNumber(arg)
        limit, _ = parseNumber(arg[used:].lstrip(b" "))
        self._hold()
        d = self.mailbox.openMessage(self.messages[i][0])
        d.addCallbacks(self._cbSend, self._ebOpen, callbackArgs=(limit,))

    def _cbSend(self, source, limit):
        if self.state == "closed":
            source.close()
            return
        self.reply(OK)
        _Sender(self, source, Transmitter(limit)).start()

    def _ebOpen(self, failure):
        if self.state != "closed":
            self.reply(ERR_OPEN)
            self._release()

    def t_QUIT(self, arg):
        names = list(map(_name, self.messages))
        deleted = list(itertools.compress(names, self.deleted))
        kept = list(filter(_inNew, self._present(names)))
        self._hold()
        self.state = "update"
        if not (deleted or kept):
            return self._cbUpdated(0)
        d = self.mailbox.update(deleted, kept)
        d.addErrback(lambda f: len(deleted))
        d.addCallback(self._cbUpdated)

    def _cbUpdated(self, failures):
        if self.transport.disconnecting or self.state == "closed":
            return
        self.transport.write((ERR_UNLINK + b"\r\n") * failures + OK + b"\r\n")
        self.close()

    TRANSACTION_VERBS = {
        b"stat": t_STAT,
        b"list": t_LIST,
        b"uidl": t_UIDL,
        b"retr": t_TOP,
        b"top": t_TOP,
        b"dele": t_DELE,
        b"rset": t_RSET,
        b"last": t_LAST,
        b"noop": t_NOOP,
        b"quit": t_QUIT,
        b"capa": Popup.do_CAPA,
    }


class _Sender:
    """Streams one message to the client as a push producer: one chunk in memory at a time."""

    def __init__(self, proto, source, transmitter):
        self.proto = proto
        self.source = source
        self.transmitter = transmitter
        self.paused = False
        self.waiting = False
        self.finished = False
        self.pumping = False

    def start(self):
        self.proto.transport.registerProducer(self, True)
        self._pump()

    def _pump(self):
        if self.pumping:
            return
        self.pumping = True
        try:
            while not (self.paused or self.waiting or self.finished):
                self.waiting = True
                self.source.read(RETR_CHUNK).addCallbacks(self._got, self._failed)
        finally:
            self.pumping = False

    def _got(self, data):
        self.waiting = False
        if self.finished:
            return
        transport = self.proto.transport
        if data:
            out = self.transmitter.feed(data)
            if out:
                transport.write(out)
                self.proto.resetTimeout()
        if not data or self.transmitter.done:
            transport.write(self.transmitter.finish())
            self._end()
            self.proto._release()
        elif not self.pumping:
            self._pump()

    def _failed(self, failure):
        self.waiting = False
        if not self.finished:
            self._end()
            self.proto.close()

    def _end(self):
        self.finished = True
        self.source.close()
        self.proto.transport.unregisterProducer()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pump()

    def stopProducing(self):
        if not self.finished:
            self.finished = True
            self.source.close()


class POP3Factory(protocol.Factory):
    """
    Builds L{POP3Server}s for one listener.  C{implicitTLS} marks a POP3S listener (TLS is
    already active when the protocol starts).
    """

    busyReply = b"-ERR too many connections\r\n"

    def __init__(self, config, reactor, implicitTLS=False):
        self.config = config
        self.reactor = reactor
        self.implicitTLS = implicitTLS
        self._serials = itertools.count(int(time.time()) % 100000 * 1000 + os.getpid() % 1000)

    def buildProtocol(self, addr):
        p = POP3Server(self.config, self.reactor, next(self._serials))
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
    )
    factory = POP3Factory(config, site.reactor, implicitTLS=implicitTLS)
    if not implicitTLS:
        return factory
    if tlsContext is None:
        raise ValueError("--pop3s needs control/servercert.pem")
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(tlsContext, False, factory)
