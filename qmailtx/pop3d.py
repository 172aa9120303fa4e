"""
POP3 TRANSACTION and UPDATE states: qmail-pop3d's verbs (spec/pop3.md §3) and its message
transmission (L{Transmitter}, the RETR/TOP line encoding; L{_Sender}, streaming it).

L{Pop3d} is a mixin for the protocol in L{qmailtx.pop3}, as L{qmailtx.popup.Popup} is for
AUTHORIZATION: when TRANSACTION starts the protocol sets C{mailbox} (from L{qmailtx.pop3box}),
C{messages} (its listing), C{deleted} and C{last}; L{Pop3d} answers from them and reaches the
mailbox only through C{mailbox.openMessage} and C{mailbox.update}.  It uses the protocol's
C{reply}, C{close}, C{transport}, C{resetTimeout} and its C{_hold}/C{_release} (one command
in flight).

Writes nothing to disk; must not import Twisted's reactor, control files, the queue or uid
switching.
"""

import itertools
import operator
import re

from qmailtx.maildirscan import uidOf
from qmailtx.popup import ERR_SYNTAX, ERR_UNIMPLEMENTED, OK, Popup, splitCommand

RETR_CHUNK = 65536
"""Bytes read from a message file per step while streaming RETR/TOP."""

ERR_OPEN = b"-ERR unable to open that message"
ERR_UNLINK = b"-ERR unable to unlink all deleted messages"
ERR_COUNT_FROM_1 = b"-ERR messages are counted from 1"
ERR_TOO_MANY = b"-ERR not that many messages"
ERR_DELETED = b"-ERR already deleted"

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


class Pop3d:
    """qmail-pop3d's TRANSACTION verbs and the QUIT that runs UPDATE."""

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
        if self.config.commits is not None:
            self.config.commits.track(d)

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
    """
    Streams one message to the client, one chunk in memory at a time.  The protocol is
    its transport's producer for the whole connection and passes pauses on to the
    sender in flight (C{proto.sender}).
    """

    def __init__(self, proto, source, transmitter):
        self.proto = proto
        self.source = source
        self.transmitter = transmitter
        self.paused = False
        self.waiting = False
        self.finished = False
        self.pumping = False

    def start(self):
        self.proto.sender = self
        self.paused = self.proto._outputFull
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
        if self.proto.sender is self:
            self.proto.sender = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pump()

    def stopProducing(self):
        if not self.finished:
            self.finished = True
            self.source.close()


class Transmitter:
    """
    qmail-pop3d's message encoding, streaming: lines split at LF, a leading C{.} doubled,
    every line ended CRLF (a last line without LF too); with C{bodyLines} set, stop before
    body line C{bodyLines + 1}.  L{finish} adds the extra empty line and the C{.} line.

    A line's bytes leave as they arrive (nothing is held back across chunks), so a message
    of one very long line costs time and memory linear in one chunk, not in the line.
    """

    def __init__(self, bodyLines=None):
        self.bodyLines = bodyLines
        self.atLineStart = True
        self.inHeader = True
        self.done = False

    def feed(self, chunk):
        """Encode C{chunk}; returns the bytes to send (may be empty)."""
        if self.done or not chunk:
            return b""
        if self.bodyLines is None:
            out = chunk.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
            if self.atLineStart and chunk[:1] == b".":
                out = b"." + out
            self.atLineStart = chunk[-1:] == b"\n"
            return out
        return self._feedLines(chunk)

    def _feedLines(self, chunk):
        out = []
        pos = 0
        end = len(chunk)
        while pos < end:
            if self.atLineStart:
                if not self._startLine(chunk[pos:pos + 1]):
                    self.done = True
                    break
                if chunk[pos:pos + 1] == b".":
                    out.append(b".")
                self.atLineStart = False
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                out.append(chunk[pos:])
                break
            out.append(chunk[pos:nl])
            out.append(b"\r\n")
            self.atLineStart = True
            pos = nl + 1
        return b"".join(out)

    def _startLine(self, first):
        """A line begins with byte C{first}: count it; C{False} if TOP stops before it."""
        if not self.inHeader:
            if self.bodyLines <= 0:
                return False
            self.bodyLines -= 1
        elif first == b"\n":
            self.inHeader = False
        return True

    def finish(self):
        """The bytes that end the transmission."""
        out = []
        if not self.atLineStart:
            out.append(b"\r\n")
        self.done = True
        out.append(b"\r\n.\r\n")
        return b"".join(out)
