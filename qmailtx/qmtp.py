"""
The QMTP server: qmail-qmtpd's behaviour (spec/qmqp-qmtp.md §2) as a Twisted protocol.

Owns QMTP framing (the pure L{PackageParser}), the per-recipient responses, and the
rcpthosts rule; the package-server machinery it shares with QMQP lives in L{qmailtx.qmqp}.
Reads C{rcpthosts}, C{morercpthosts.cdb} and C{databytes} through
L{qmailtx.control.ControlDir}; writes nothing itself (messages go to a queue writer).
Must not import delivery, the queue's directories, or C{smtp}.
"""

import os

from qmailtx import netstring
from qmailtx.address import rcpthostsAllows
from qmailtx.control import ControlError, envUlong
from qmailtx.qmqp import (
    ADDRESS_LIMIT, MAX_ENVELOPE, MAX_RECIPIENTS, MESSAGE_DATA, MESSAGE_START, PACKAGE_END,
    RECIPIENT, SENDER, PackageServer, PackageServerFactory, ResourceError)
from qmailtx.writethrough import writeNow

RCPTHOSTS_REPLY = b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
BADRCPT_REPLY = b"46:Dsorry, I can't handle that recipient (#5.1.3),"
BAD_SENDER = b"Dunacceptable sender (#5.1.7)"
DATABYTES_EXCEEDED = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"


class PackageParser:
    """
    QMTP packages from bytes (§2.1), pure.  L{feed} returns C{(events, rest)}; C{rest} is
    the input after a package's end, which the caller feeds again when it is ready.

    Events: C{(MESSAGE_START, (dos, length))}, C{(MESSAGE_DATA, chunk)} already converted
    (CR LF ⇒ LF in DOS mode), C{(SENDER, address or None if unacceptable)},
    C{(RECIPIENT, (address, code))} with code C{None}, C{b"L"} (too long) or C{b"N"} (NUL),
    C{(PACKAGE_END, None)}.

    @ivar recipientLimit: the shortest recipient refused as too long (1000 minus the
        length of RELAYCLIENT, as qmail-qmtpd computes it).
    """

    def __init__(self, recipientLimit=ADDRESS_LIMIT):
        self.recipientLimit = recipientLimit
        self._outer = netstring.NetstringDecoder()
        self._outer.stopAfterEnd = True
        self._part = 0
        self._start()

    def _start(self):
        self._part = 0
        self._first = True
        self._dos = False
        self._heldCR = False
        self._buf = None
        self._inner = None
        self._count = 0

    def feed(self, data):
        events = []
        while data:
            for kind, value in self._outer.feed(data):
                if kind == netstring.LENGTH:
                    self._length(value, events)
                elif kind == netstring.DATA:
                    self._data(value, events)
                else:
                    self._end(events)
            data = data[self._outer.consumed:]
            if events and events[-1][0] == PACKAGE_END:
                break
        return events, data

    def _length(self, length, events):
        part = self._part
        if part == 0:
            if length == 0:
                raise netstring.NetstringError("empty QMTP message")
            self._first = True
            self._messageLength = length - 1
        elif part == 1:
            self._buf = bytearray() if length < ADDRESS_LIMIT else None
        else:
            self._inner = netstring.NetstringDecoder(bound=length)

    def _data(self, chunk, events):
        part = self._part
        if part == 0:
            if self._first:
                self._first = False
                if chunk[0] not in (10, 13):
                    raise netstring.NetstringError("QMTP message without encoding byte")
                self._dos = chunk[0] == 13
                events.append((MESSAGE_START, (self._dos, self._messageLength)))
                chunk = chunk[1:]
                if not chunk:
                    return
            if self._dos:
                if self._heldCR:
                    chunk = b"\r" + chunk
                self._heldCR = chunk.endswith(b"\r")
                if self._heldCR:
                    chunk = chunk[:-1]
                chunk = chunk.replace(b"\r\n", b"\n")
                if not chunk:
                    return
            events.append((MESSAGE_DATA, chunk))
        elif part == 1:
            if self._buf is not None:
                self._buf += chunk
        else:
            for kind, value in self._inner.feed(chunk):
                if kind == netstring.LENGTH:
                    self._count += 1
                    if self._count > MAX_RECIPIENTS:
                        raise ResourceError("too many recipients")
                    self._buf = bytearray() if value < self.recipientLimit else None
                elif kind == netstring.DATA:
                    if self._buf is not None:
                        self._buf += value
                elif self._buf is None:
                    events.append((RECIPIENT, (None, b"L")))
                else:
                    code = b"N" if 0 in self._buf else None
                    events.append((RECIPIENT, (bytes(self._buf), code)))

    def _end(self, events):
        part = self._part
        if part == 0:
            if self._heldCR:
                events.append((MESSAGE_DATA, b"\r"))
            self._part = 1
        elif part == 1:
            buf = self._buf
            events.append((SENDER, None if buf is None or 0 in buf else bytes(buf)))
            self._part = 2
        else:
            if not self._inner.atBoundary:
                raise netstring.NetstringError("truncated recipient netstring")
            events.append((PACKAGE_END, None))
            self._start()


class QMTPServer(PackageServer):
    """
    One QMTP connection: packages in, one response per recipient out, in order
    (spec/qmqp-qmtp.md §2.2).  A protocol error closes the connection after the
    responses of every package already queued have been written.
    """

    proto = b"QMTP"

    def sessionStarted(self):
        controls = self.factory.controls
        try:
            rcpthosts = controls.list("rcpthosts")
            self._rcpthosts = (
                None if rcpthosts is None else frozenset(x.lower() for x in rcpthosts))
            self._morercpthosts = (
                controls.cdb("morercpthosts.cdb") if rcpthosts is not None else None)
            databytes = controls.int("databytes", 0)
        except ControlError:
            self.closeSession()
            return
        if "DATABYTES" in self.env:
            databytes = envUlong(self.env["DATABYTES"])
        self._databytes = databytes
        relay = self.env.get("RELAYCLIENT")
        self._relayclient = None if relay is None else os.fsencode(relay)
        limit = ADDRESS_LIMIT - len(self._relayclient or b"")
        self._parser = PackageParser(recipientLimit=limit)

    def handleData(self, data):
        while data:
            events, data = self._parser.feed(data)
            for kind, value in events:
                if kind == MESSAGE_DATA:
                    self._messageData(value)
                elif kind == RECIPIENT:
                    self._recipient(*value)
                elif kind == MESSAGE_START:
                    self._messageStart(*value)
                elif kind == SENDER:
                    self._sender = value
                else:
                    self._packageEnd()
            if "commit" in self._pauses:
                self._held += data
                return

    def _messageStart(self, dos, length):
        self._failure = None
        self._overflow = False
        self._left = self._databytes
        self._codes = []
        self._recipients = []
        self._envelopeBytes = 0
        if self._databytes and not dos and length > self._databytes:
            self._overflow = True
        else:
            self._failure = self.beginMessage()

    def _messageData(self, chunk):
        if self._writer is None:
            return
        if self._databytes:
            if len(chunk) > self._left:
                self._overflow = True
                self._abortWriter()
                return
            self._left -= len(chunk)
        self._writer.write(chunk)

    def _recipient(self, address, code):
        if code is None:
            if self._relayclient is not None:
                address += self._relayclient
            elif not rcpthostsAllows(address, self._rcpthosts, self._morercpthosts):
                code = b"D"
        if code is None:
            self._envelopeBytes += len(address) + 2
            if self._envelopeBytes > MAX_ENVELOPE:
                raise ResourceError("envelope too large")
            self._recipients.append(address)
        self._codes.append(code)

    def _packageEnd(self):
        codes, recipients = self._codes, self._recipients
        if self._overflow:
            report = DATABYTES_EXCEEDED
        elif self._sender is None:
            report = BAD_SENDER
        elif self._failure is not None:
            report = self._failure.letter + self._failure.text
        elif not recipients:
            report = b""
        else:
            self.commitMessage(self._sender, recipients, lambda r: self._respond(r, codes))
            return
        self._abortWriter()
        self._respond(report, codes)

    def _respond(self, report, codes):
        accepted = netstring.encode(report)
        writeNow(self.transport, b"".join(
            accepted if code is None else RCPTHOSTS_REPLY if code == b"D" else BADRCPT_REPLY
            for code in codes))


class QMTPFactory(PackageServerFactory):
    """
    Builds L{QMTPServer}s; see L{PackageServerFactory}.  C{controls} (a
    L{qmailtx.control.ControlDir}) is read per connection, as qmail-qmtpd reads it.
    """

    protocol = QMTPServer
