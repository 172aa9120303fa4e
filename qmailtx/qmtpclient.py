"""
The QMTP client (spec/qmqp-qmtp.md §3, spec/remote.md §7): one package per connection,
the message streamed as stored (LF lines) from the queue file, one response netstring per
recipient mapped to qmail-remote's reports (C{K} => C{r}, C{Z} => C{s}, C{D} => C{h}).

Used for C{qmtproutes} and for MX hosts whose preference announces QMTP (MXPS).  Moves
bytes only; reads the queue file it is handed; writes nothing on disk.  Must not import
the queue or the servers.
"""

import os

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin

from qmailtx.nodelay import setNoDelay
from qmailtx import netstring
from qmailtx.encoder import MessageStreamer, verbatim
from qmailtx.smtpdialogue import Attempt, diedReport

RESPONSE_LIMIT = 5000
"""Bytes of one response netstring kept (as much as qmail-remote keeps of an SMTP reply)."""


class QMTPClient(Protocol, TimeoutMixin):
    """
    Sends one package and collects C{count} responses.

    @ivar responses: fires with the list of response payloads once all have arrived,
        or fails when the connection ends first or a response is not a netstring.
    """

    def __init__(self, timeout, clock):
        self.timeoutPeriod = timeout
        self.callLater = clock.callLater
        self.responses = defer.Deferred()
        self._decoder = netstring.NetstringDecoder(maxLength=RESPONSE_LIMIT)
        self._current = []
        self._received = []
        self._count = None
        self.connected = False

    def connectionMade(self):
        self.connected = True
        setNoDelay(self.transport)
        self.setTimeout(self.timeoutPeriod)

    def peerAddress(self):
        return self.transport.getPeer().host.encode("ascii")

    def sendPackage(self, messageFile, sender, recipients):
        """Write the package; the message is streamed. Returns L{responses}."""
        self._count = len(recipients)
        size = os.fstat(messageFile.fileno()).st_size
        self.transport.write(b"%d:\n" % (size + 1))
        trailer = (b"," + netstring.encode(sender)
                   + netstring.encode(netstring.encodeList(recipients)))
        streamer = MessageStreamer(messageFile, self.transport, verbatim(), trailer,
                                   progress=self.resetTimeout)
        streamer.start().addErrback(self._writeFailed)
        return self.responses

    def _writeFailed(self, reason):
        self.transport.abortConnection()
        self._fail(reason)

    def dataReceived(self, data):
        self.resetTimeout()
        try:
            events = self._decoder.feed(data)
        except netstring.NetstringError as e:
            self.transport.abortConnection()
            self._fail(e)
            return
        for kind, value in events:
            if kind == netstring.DATA:
                self._current.append(value)
            elif kind == netstring.END:
                self._received.append(b"".join(self._current))
                self._current = []
                if len(self._received) == self._count and not self.responses.called:
                    self.setTimeout(None)
                    self.responses.callback(self._received)
                    self.transport.loseConnection()
                    return

    def timeoutConnection(self):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.connected = False
        self.setTimeout(None)
        self._fail(reason)

    def _fail(self, reason):
        if not self.responses.called:
            self.responses.errback(reason)

    def quit(self):
        if self.connected:
            self.transport.loseConnection()


_LETTERS = {b"K": b"r", b"Z": b"s", b"D": b"h"}


def reports(ip, responses):
    """
    qmail-remote's reports for the QMTP responses, shaped like the SMTP ones so that
    L{qmailtx.remote.combine} treats both alike: C{Z}/C{D} responses become C{s}/C{h}
    recipient reports with the response's text and a newline; the message report is C{K} with the
    first C{K} response's text (qmail-qmtpd gives every recipient of a package the same),
    or C{Giving up} when no recipient was accepted.

    @raise ValueError: for a response that does not start with K, Z or D.
    """
    recipients, accepted = [], None
    for response in responses:
        letter = response[:1]
        if letter not in _LETTERS:
            raise ValueError("garbled QMTP response")
        recipients.append(_LETTERS[letter] + (response[1:] + b"\n" if letter != b"K" else b""))
        if letter == b"K" and accepted is None:
            accepted = response
    if accepted is None:
        return Attempt(recipients, b"DGiving up on " + ip + b".\n")
    return Attempt(recipients, accepted)


@defer.inlineCallbacks
def deliver(client, sender, recipients, messPath):
    """
    One package on a connected L{QMTPClient}: an L{Attempt}.  A missing or garbled
    response is the #4.4.2 deferral.
    """
    ip = client.peerAddress()
    try:
        with open(messPath, "rb") as messageFile:
            responses = yield client.sendPackage(messageFile, sender, recipients)
        return reports(ip, responses)
    except OSError:
        client.quit()
        return Attempt([None] * len(recipients), b"ZUnable to read message. (#4.3.0)\n")
    except Exception:
        client.quit()
        return Attempt([None] * len(recipients), diedReport(ip))
