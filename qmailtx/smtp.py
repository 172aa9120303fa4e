"""
qmail-smtpd as a Twisted protocol (spec/smtp.md §1–6).

Owns the SMTP dialogue: command framing with a bounded line, verbs and their exact replies,
PIPELINING with replies strictly in order, and the DATA phase streamed into a queue writer
through L{qmailtx.smtpdata.DataReader}.  Policy decisions are the pure functions of
L{qmailtx.address}; control files arrive as an L{SmtpControls} snapshot from the factory
(L{qmailtx.smtpfactory}); the queue is whatever the factory hands out (the in-process queue,
or the C{QMAILQUEUE} program).  STARTTLS, SMTPS and AUTH (§7–8) come from the mixins of L{qmailtx.smtpsecure}.
Never reads queue directories, never delivers.
"""

from twisted.internet import defer
from twisted.internet.protocol import Protocol

from qmailtx import address, log
from qmailtx.control import ControlError, envUlong
from qmailtx.results import PermFailure, TempFailure, smtpReply
from qmailtx.smtpdata import HOP_LIMIT, BareLineFeed, DataReader
from qmailtx.smtpsecure import SecureSession
from qmailtx.writethrough import writeNow

COMMAND_LINE_LIMIT = 4096
"""Bytes of one command line before the client is cut off: far above qmail's 900-byte
address limit plus the ESMTP parameters a real client sends (RFC 5321 §4.5.3.1.4)."""

RECIPIENT_LIMIT = 1000
"""Recipients held for one message.  qmail has no limit; bounded memory needs one, and
RFC 5321 §4.5.3.1.8 asks for at least 100 (Postfix also stops at 1000)."""

PIPELINE_LIMIT = 64 * 1024
"""Pipelined bytes held while a reply is pending (a DATA commit) before reading pauses."""

BARE_LF = b"451 See https://cr.yp.to/docs/smtplf.html.\r\n"

_COMMAND, _DATA, _CLOSED = 0, 1, 2


def _envBytes(env, name):
    value = env.get(name)
    return None if value is None else value.encode("utf-8", "surrogateescape")


class SMTPServer(SecureSession, Protocol):
    """
    One SMTP session.  C{env} (the tcpserver environment: TCPREMOTEIP, RELAYCLIENT,
    DATABYTES, QMAILQUEUE, ...) is set by the rules layer before the connection is made.
    """

    env = None
    timeout = 1200
    lastActivity = 0.0
    _idleBucket = None
    _replies = None

    def connectionMade(self):
        factory = self.factory
        env = self.env
        if env is None:
            env = self.env = factory.envFromTransport(self.transport)
        self.lastActivity = factory.clock.seconds()
        self.writer = None
        self.reader = None
        try:
            c = self.controls = factory.loadControls()
        except ControlError as e:
            log.warning(f"smtp: unable to read controls: {e}")
            self._state = _CLOSED
            self.transport.write(b"421 unable to read controls (#4.3.0)\r\n")
            self.transport.loseConnection()
            return
        if factory.ownAddresses() is None:
            self._state = _CLOSED
            self.transport.write(b"421 unable to figure out my IP addresses (#4.3.0)\r\n")
            self.transport.loseConnection()
            return
        self.timeout = c.timeout
        self.remotehost = _envBytes(env, "TCPREMOTEHOST") or b"unknown"
        self.helo = None
        self.relayclient = _envBytes(env, "RELAYCLIENT")
        databytes = env.get("DATABYTES")
        if databytes is None:
            self.databytes = c.databytes
        else:
            self.databytes = envUlong(databytes)
        self._buffer = b""
        self._state = _COMMAND
        self._blocked = False
        self._outputFull = False
        self._queueFull = False
        self.sender = None
        self.recipients = []
        self.badSender = False
        self.transport.registerProducer(self, True)
        if not self.startSecurity():
            return
        factory.timeouts.watch(self)
        self.greet(b"220 " + c.greeting + b" ESMTP\r\n")

    # -- flow control (we are our own transport's producer) -------------------

    def pauseProducing(self):
        self._outputFull = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._outputFull = False
        self._readIfFree()

    def stopProducing(self):
        pass

    def _readIfFree(self):
        """Read again unless a reply, the output or the queue program's pipe still holds us."""
        if not (self._blocked or self._outputFull or self._queueFull) and self._state != _CLOSED:
            self.transport.resumeProducing()

    def _queueBacklog(self, full):
        """The queue program's stdin pipe filled up (C{full}) or drained, or went away."""
        self._queueFull = full
        if full:
            self.transport.pauseProducing()
        else:
            self._readIfFree()

    def _block(self):
        """
        Hold commands until a reply is decided (a commit, a password check), and stop
        reading: an end of input seen meanwhile would close the connection before the
        replies still owed (a client may pipeline the dot, QUIT and a half-close).
        """
        self._blocked = True
        self.transport.pauseProducing()

    def _unblock(self):
        self._blocked = False
        if self._state == _CLOSED:
            return
        self._readIfFree()
        self._process()

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data):
        if self._state == _CLOSED:
            return
        self.lastActivity = self.factory.clock.seconds()
        self._buffer += data
        if self._blocked:
            if len(self._buffer) > PIPELINE_LIMIT:
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self):
        """
        Act on every complete command buffered; the replies they produce leave together
        when the buffer is done, so a pipelined batch costs one send.
        """
        if self._replies is not None:
            return self._processCommands()
        self._replies = []
        try:
            self._processCommands()
        finally:
            self._flushReplies()
            self._replies = None

    def _processCommands(self):
        while self._buffer and not self._blocked and self._state != _CLOSED:
            if self._state == _DATA:
                data, self._buffer = self._buffer, b""
                self._dataChunk(data)
                continue
            nl = self._buffer.find(b"\n")
            if nl < 0 or nl > COMMAND_LINE_LIMIT:
                if nl > COMMAND_LINE_LIMIT or len(self._buffer) > COMMAND_LINE_LIMIT:
                    self._fatal(b"500 command line too long (#5.5.2)\r\n")
                return
            line = self._buffer[:nl]
            self._buffer = self._buffer[nl + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._command(line)

    def _command(self, line):
        nul = line.find(b"\0")
        if nul >= 0:
            line = line[:nul]  # qmail-smtpd parses a command as a C string
        if self.sasl is not None:
            return self.saslLine(line)
        sp = line.find(b" ")
        if sp < 0:
            verb, arg = line, b""
        else:
            verb, arg = line[:sp], line[sp + 1:].lstrip(b" ")
        handler = None
        if verb.isalpha() and len(verb) <= 16:
            handler = getattr(self, "do_" + verb.decode("ascii").upper(), None)
        if handler is None:
            self.reply(b"502 unimplemented (#5.5.1)")
        else:
            handler(arg)

    def reply(self, line):
        self.send(line + b"\r\n")

    def send(self, data):
        """Say C{data} now, or with the rest of the replies to the commands being read."""
        if self._replies is not None:
            self._replies.append(data)
        else:
            writeNow(self.transport, data)

    def _flushReplies(self):
        replies = self._replies
        if replies:
            data = b"".join(replies)
            replies.clear()
            writeNow(self.transport, data)

    def _fatal(self, text):
        """Say C{text} and close: framing errors, over-long lines, timeouts."""
        self._state = _CLOSED
        self._buffer = b""
        self._abortWriter()
        self.send(text)
        self._close()

    def _close(self):
        self._state = _CLOSED
        self._flushReplies()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def idleTimedOut(self):
        if self._state != _CLOSED:
            self._fatal(b"451 timeout (#4.4.2)\r\n")

    def shuttingDown(self):
        """The server stops (RFC 5321 §3.8: try to send a 421 first); a message still
        arriving is dropped, and its client sends it again."""
        if self._state != _CLOSED:
            host = self.controls.greeting.split(b" ", 1)[0]
            self._fatal(b"421 %s shutting down, try again later (#4.3.2)\r\n" % host
                        if host else b"421 shutting down, try again later (#4.3.2)\r\n")

    def _isClosed(self):
        return self._state == _CLOSED

    def connectionLost(self, reason):
        self._state = _CLOSED
        self._abortWriter()
        self.factory.timeouts.forget(self)
        self.securityLost()

    # -- verbs ---------------------------------------------------------------

    def _greeting(self):
        return self.controls.greeting

    def _resetTransaction(self):
        self.sender = None
        self.recipients = []

    def _setHelo(self, arg):
        self._resetTransaction()
        self.helo = arg

    def do_HELO(self, arg):
        self._setHelo(arg)
        self.reply(b"250 " + self._greeting())

    def do_EHLO(self, arg):
        self._setHelo(arg)
        self.send(b"".join((
            b"250-", self._greeting(), b"\r\n",
            self.ehloTLSLines(),
            b"250-PIPELINING\r\n",
            b"250-8BITMIME\r\n",
            self.ehloAuthLines(),
            b"250 SIZE %d\r\n" % self.databytes,
        )))

    def _parse(self, arg):
        return address.parseAddress(arg, self.factory.ipme, self.controls.localiphost)

    def do_MAIL(self, arg):
        refused = self.mailRefused()
        if refused is not None:
            return self.reply(refused)
        parsed = self._parse(arg)
        if parsed is None:
            return self.reply(b"555 syntax error (#5.5.4)")
        sender, params = parsed
        size = address.sizeParameter(params)
        if self.databytes and size is not None and size > self.databytes:
            return self.reply(b"552 sorry, that message size exceeds my databytes limit (#5.3.4)")
        self.badSender = address.badmailfromMatches(sender, self.controls.badmailfrom)
        self.sender = sender
        self.recipients = []
        self.reply(b"250 ok")

    def do_RCPT(self, arg):
        if self.sender is None:
            return self.reply(b"503 MAIL first (#5.5.1)")
        parsed = self._parse(arg)
        if parsed is None:
            return self.reply(b"555 syntax error (#5.5.4)")
        recipient = parsed[0]
        if len(self.recipients) >= RECIPIENT_LIMIT:
            return self.reply(b"452 too many recipients (#4.5.3)")
        if self.badSender:
            return self.reply(
                b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)")
        if self.relayclient is not None:
            recipient += self.relayclient
        elif not address.rcpthostsAllows(
                recipient, self.controls.rcpthosts, self.controls.morercpthosts):
            return self.reply(
                b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
        self.recipients.append(recipient)
        self.reply(b"250 ok")

    def do_DATA(self, arg):
        if self.sender is None:
            return self.reply(b"503 MAIL first (#5.5.1)")
        if not self.recipients:
            return self.reply(b"503 RCPT first (#5.5.1)")
        sender, recipients = self.sender, self.recipients
        self._resetTransaction()
        try:
            writer = self.factory.queueFor(self.env).begin(b"from network")
        except (TempFailure, PermFailure) as e:
            writer = _RefusedWriter(e)
        except Exception as e:
            log.warning(f"smtp: cannot start queue: {e}")
            return self.reply(b"451 qqt failure (#4.3.0)")
        self.writer = writer
        self._envelope = (sender, recipients)
        self.reply(b"354 go ahead")
        writer.write(self._received())
        self._tooBig = False
        self.reader = DataReader(self._dataSink)
        self._state = _DATA
        if hasattr(writer, "registerProducer"):
            writer.registerProducer(_QueueBacklog(self), True)

    def _received(self):
        env = self.env
        local = env.get("TCPLOCALHOST") or env.get("TCPLOCALIP") or "unknown"
        info = env.get("TCPREMOTEINFO")
        return address.receivedLine(
            self.remotehost,
            self.helo,
            None if info is None else info.encode("utf-8", "surrogateescape"),
            _envBytes(env, "TCPREMOTEIP") or b"unknown",
            local.encode("utf-8", "surrogateescape"),
            self.proto(),
            self.factory.clock.seconds(),
        )

    def _dataSink(self, text):
        if self._tooBig:
            return
        if self.databytes and self.reader.size > self.databytes:
            self._tooBig = True
            return
        self.writer.write(text)

    def _dataChunk(self, data):
        try:
            rest = self.reader.feed(data)
        except BareLineFeed:
            return self._fatal(BARE_LF)
        if rest is None:
            return
        self._buffer = rest + self._buffer
        self._state = _COMMAND
        self._finishMessage()

    def _finishMessage(self):
        reader, writer = self.reader, self.writer
        self.reader = None
        if hasattr(writer, "unregisterProducer"):
            writer.unregisterProducer()
            if self._queueFull:
                self._queueBacklog(False)
        if reader.hops >= HOP_LIMIT:
            self._abortWriter()
            return self.reply(b"554 too many hops, this message is looping (#5.4.6)")
        if self._tooBig:
            self._abortWriter()
            return self.reply(b"552 sorry, that message size exceeds my databytes limit (#5.3.4)")
        sender, recipients = self._envelope
        self._block()
        d = defer.maybeDeferred(writer.commit, sender, recipients)
        d.addCallbacks(self._cbQueued, self._ebQueued, callbackArgs=(writer,))
        d.addBoth(lambda _: self._committed())

    def _cbQueued(self, msgid, writer):
        self.writer = None
        if self._state != _CLOSED:
            self.reply(b"250 ok %d qp %d" % (int(self.factory.clock.seconds()), writer.qp))

    def _ebQueued(self, failure):
        self.writer = None
        error = failure.value
        if not isinstance(error, Exception) or not hasattr(error, "permanent"):
            log.warning(f"smtp: queue failure: {failure.getErrorMessage()}")
            error = TempFailure(b"qq temporary problem (#4.3.0)")
        if self._state != _CLOSED:
            self.reply(smtpReply(error))

    def _committed(self):
        self._unblock()

    def _abortWriter(self):
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.abort()
            except Exception as e:
                log.warning(f"smtp: aborting queue writer: {e}")

    def do_RSET(self, arg):
        self._resetTransaction()
        self.reply(b"250 flushed")

    def do_NOOP(self, arg):
        self.reply(b"250 ok")

    def do_VRFY(self, arg):
        self.reply(b"252 send some mail, i'll try my best")

    def do_HELP(self, arg):
        self.reply(b"214 qmailtx: qmail's design on Twisted")

    def do_QUIT(self, arg):
        self.reply(b"221 " + self._greeting())
        self._close()


class _RefusedWriter:
    """
    The writer of a queue that answered at its start (a C{QMAILQUEUE} program that cannot
    be executed): the message is read and dropped, and its end gets that answer, as
    qmail-smtpd reports the program's exit after the dot.  Refusing DATA itself would make
    a client that sends its body anyway have each line read as a command.
    """

    def __init__(self, failure):
        self.failure = failure

    def write(self, data):
        pass

    def commit(self, sender, recipients):
        raise self.failure

    def abort(self):
        pass


class _QueueBacklog:
    """
    What a queue program's stdin pipe pauses while it is backed up.  Its end (the program
    closed its input early, a filter refusing) lets the session read on to the dot: the
    answer then comes from the program's exit code, as qmail-smtpd's does.
    """

    def __init__(self, server):
        self._server = server

    def pauseProducing(self):
        self._server._queueBacklog(True)

    def resumeProducing(self):
        self._server._queueBacklog(False)

    def stopProducing(self):
        self._server._queueBacklog(False)
