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

    @ivar responses: fires with the list of response payloads: all of them, or those that
        arrived before the connection ended or a reply was not a netstring (each stands
        for its own recipient, spec/qmqp-qmtp.md §3); fails when the package could not be
        written.
    @ivar packageSent: the whole package went out, so a missing response may hide a
        delivery ("Possible duplicate!").
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
        self.packageSent = False

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
        streamer.start().addCallbacks(self._written, self._writeFailed)
        return self.responses

    def _written(self, _):
        self.packageSent = self.connected

    def _writeFailed(self, reason):
        self.transport.abortConnection()
        self._fail(reason)

    def dataReceived(self, data):
        self.resetTimeout()
        try:
            events = self._decoder.feed(data)
        except netstring.NetstringError:
            self.transport.abortConnection()
            self._finish()
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
        self._finish()

    def _finish(self):
        """The responses so far are all there will be."""
        if not self.responses.called:
            self.responses.callback(self._received)

    def _fail(self, reason):
        if not self.responses.called:
            self.responses.errback(reason)

    def quit(self):
        if self.connected:
            self.transport.loseConnection()


_LETTERS = {b"K": b"r", b"Z": b"s", b"D": b"h"}


def reports(ip, responses, count, packageSent=True):
    """
    qmail-remote's reports for the QMTP responses to C{count} recipients, shaped like the
    SMTP ones so that L{qmailtx.remote.combine} treats both alike: C{Z}/C{D} responses
    become C{s}/C{h} recipient reports with the response's text and a newline; the message
    report is C{K} with the first C{K} response's text (qmail-qmtpd gives every recipient of
    a package the same), or C{Giving up} when no recipient was accepted.

    A recipient whose response is missing, or comes after a garbled one, gets the #4.4.2
    deferral ("Possible duplicate!" when the package was sent): as its own C{s} report when
    another was accepted, else as the message report.  The answered ones keep their answers,
    so a K already given is never sent again.
    """
    recipients, accepted = [], None
    for response in responses[:count]:
        letter = response[:1]
        if letter not in _LETTERS:
            break
        recipients.append(_LETTERS[letter] + (response[1:] + b"\n" if letter != b"K" else b""))
        if letter == b"K" and accepted is None:
            accepted = response
    missing = count - len(recipients)
    if not missing:
        return Attempt(recipients, accepted or b"DGiving up on " + ip + b".\n")
    died = diedReport(ip, packageSent)
    if accepted is None:
        return Attempt(recipients + [None] * missing, died)
    return Attempt(recipients + [b"s" + died[1:]] * missing, accepted)


@defer.inlineCallbacks
def deliver(client, sender, recipients, messPath):
    """
    One package on a connected L{QMTPClient}: an L{Attempt}.  A missing or garbled
    response is the #4.4.2 deferral of its recipient (L{reports}).
    """
    ip = client.peerAddress()
    try:
        with open(messPath, "rb") as messageFile:
            responses = yield client.sendPackage(messageFile, sender, recipients)
        return reports(ip, responses, len(recipients), client.packageSent)
    except OSError:
        client.quit()
        return Attempt([None] * len(recipients), b"ZUnable to read message. (#4.3.0)\n")
    except Exception:
        client.quit()
        return Attempt([None] * len(recipients), diedReport(ip))
