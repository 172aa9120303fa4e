"""
The SMTP client protocol: qmail-remote's side of the wire (spec/remote.md §4) on a Twisted
protocol of our own (DESIGN.md §2: not twisted.mail's ESMTPSender).

L{SMTPClient} only moves bytes: it writes command lines, parses replies the way
qmail-remote's C{smtpcode()} does (L{ReplyParser}), streams the message through
L{qmailtx.encoder}, and times out each read and write after C{timeoutremote}.  What the
commands are and what the replies mean (the dialogue and qmail-remote's report texts) is
L{qmailtx.smtpdialogue}'s.  Writes nothing on disk; reads the queue file it is handed.
Must not import the dialogue, DNS, routes, the queue or send.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin

from qmailtx.nodelay import setNoDelay
from qmailtx.encoder import MessageStreamer, SMTPEncoder
from qmailtx.writethrough import writeNow

REPLY_TEXT_LIMIT = 5000
"""Bytes of a reply kept for reports: qmail-remote's HUGESMTPTEXT."""

REPLY_LIMIT = 1024 * 1024
"""Bytes of one reply read at all before the server is taken to be broken (qmail has no
bound; this one keeps a server that never ends a multi-line reply from holding us)."""


@dataclass(frozen=True)
class Reply:
    """One complete server reply: C{code} as qmail computes it, C{text} without CRs."""

    code: int
    text: bytes


class ReplyTooLong(Exception):
    """The server sent more than L{REPLY_LIMIT} bytes without ending its reply."""


class ReplyParser:
    """
    qmail-remote's C{smtpcode()} as an incremental parser: the code is the first three
    bytes of the first line (whatever they are); a line whose fourth byte is C{-} is
    followed by another; CRs are dropped from the kept text; the text keeps at most
    L{REPLY_TEXT_LIMIT} bytes.  A whole line in one chunk is taken at once; the byte
    steps only serve lines split across reads.
    """

    def __init__(self):
        self._start()

    def _start(self):
        self._text = bytearray()
        self._code = 0
        self._column = 0
        self._first = True
        self._continued = False
        self._seen = 0

    def _keep(self, data):
        room = REPLY_TEXT_LIMIT - len(self._text)
        if room > 0:
            self._text += data[:room].replace(b"\r", b"")

    def feed(self, data):
        """Consume C{data}; yields every L{Reply} it completes."""
        i, n = 0, len(data)
        while i < n:
            if self._column == 0 and n - i >= 4:
                end = i + 4 if data[i + 3] == 10 else data.find(b"\n", i + 4) + 1
                if end:
                    line = data[i:end]
                    i = end
                    self._seen += len(line)
                    if self._first:
                        self._code = ((line[0] - 48) * 10 + line[1] - 48) * 10 + line[2] - 48
                    self._keep(line[:4].replace(b"\r", b""))
                    self._keep(line[4:])
                    if line[3] == 45:
                        self._first = False
                        if self._seen > REPLY_LIMIT:
                            raise ReplyTooLong()
                        continue
                    reply = Reply(self._code % 2 ** 64, bytes(self._text))
                    self._start()
                    yield reply
                    continue
            if self._column < 4:
                byte = data[i]
                i += 1
                self._seen += 1
                if byte != 13:
                    self._keep(bytes((byte,)))
                if self._column < 3:
                    if self._first:
                        self._code = self._code * 10 + (byte - 48)
                    self._column += 1
                    continue
                self._column = 4
                self._continued = byte == 45
                if byte != 10:
                    continue
                end = i - 1
            else:
                end = data.find(b"\n", i)
                if end == -1:
                    self._keep(data[i:])
                    self._seen += n - i
                    if self._seen > REPLY_LIMIT:
                        raise ReplyTooLong()
                    return
                self._keep(data[i:end + 1])
                self._seen += end + 1 - i
                i = end + 1
            if self._continued:
                self._first = False
                self._column = 0
                if self._seen > REPLY_LIMIT:
                    raise ReplyTooLong()
                continue
            reply = Reply(self._code % 2 ** 64, bytes(self._text))
            self._start()
            yield reply


class SMTPClient(Protocol, TimeoutMixin):
    """
    Commands out, replies in, in order.  Every command (and the greeting) gets a
    Deferred that fires with its L{Reply}, or fails with the reason the connection was
    lost; a read or write that makes no progress for C{timeout} seconds aborts the
    connection.

    @ivar extensions: EHLO keywords (upper case) to their parameters, after
        L{qmailtx.smtpdialogue.openSession}.
    @ivar secure: whether STARTTLS succeeded on this connection.
    @ivar reusable: cleared when the dialogue went somewhere a next transaction can't follow.
    """

    def __init__(self, timeout, clock):
        self.timeoutPeriod = timeout
        self.callLater = clock.callLater
        self._parser = ReplyParser()
        self._waiting = []
        self.extensions = {}
        self.secure = False
        self.connected = False
        self.reusable = True
        self.needsReset = False
        self.lostReason = None
        self._peer = None
        self.greeting = defer.Deferred()
        self._waiting.append(self.greeting)

    def connectionMade(self):
        self.connected = True
        setNoDelay(self.transport)
        self.setTimeout(self.timeoutPeriod)

    def peerAddress(self):
        """The server's address as qmail-remote prints it (dotted IPv4, or IPv6 text)."""
        if self._peer is None:
            self._peer = self.transport.getPeer().host.encode("ascii")
        return self._peer

    def dataReceived(self, data):
        self.resetTimeout()
        try:
            for reply in self._parser.feed(data):
                if not self._waiting:
                    self.reusable = False
                    self.transport.abortConnection()
                    return
                self._waiting.pop(0).callback(reply)
        except ReplyTooLong:
            self.transport.abortConnection()

    def timeoutConnection(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.connected = False
        self.reusable = False
        self.lostReason = reason
        self.setTimeout(None)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)

    def sendLines(self, lines):
        """Write C{lines} at once (a pipelined group); a Deferred per reply, in order."""
        results = [defer.Deferred() for _ in lines]
        if not self.connected:
            for d in results:
                d.errback(self.lostReason)
            return results
        self._waiting.extend(results)
        writeNow(self.transport, b"".join(line + b"\r\n" for line in lines))
        self.resetTimeout()
        return results

    def sendLine(self, line):
        return self.sendLines([line])[0]

    def sendMessage(self, messageFile, size=None):
        """
        Stream the message (the reply to DATA was below 400).  Returns two Deferreds: the
        message fully written (with its final dot), and the reply after it.  When writing
        fails (L{qmailtx.encoder.PartialFinalLine}, a read error) the connection is aborted
        with no dot sent.
        """
        reply = defer.Deferred()
        self._waiting.append(reply)
        streamer = MessageStreamer(messageFile, self.transport, SMTPEncoder(),
                                   progress=self.resetTimeout, size=size)

        def failed(reason):
            self.reusable = False
            reply.addErrback(lambda _: None)
            self.transport.abortConnection()
            return reason

        return streamer.start().addErrback(failed), reply

    def startTLS(self, contextFactory):
        self.transport.startTLS(contextFactory)
        self.secure = True

    def quit(self):
        """Say QUIT without waiting for the answer (qmail-remote's manners) and hang up."""
        self.reusable = False
        if self.connected:
            self.sendLine(b"QUIT").addErrback(lambda _: None)
            self.transport.loseConnection()
