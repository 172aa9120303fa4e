"""
Server-side TLS as a transport, on the standard library's C{ssl} in MemoryBIO mode, for
every listener that speaks TLS (SMTP STARTTLS/SMTPS, POP3 STLS/POP3S).

Twisted's C{TLSMemoryBIOProtocol} costs several pyOpenSSL calls per record, one of them ending
in a C{WantReadError} raised and caught every time, and its write aggregation adds a timed
call per reply.  Measured on one SMTP command and its reply, it spent about 12 us where an
C{ssl.SSLObject} spends 2, and its handshakes about 25% more.  L{TLSServer} sits between the
TCP transport and the application protocol instead: it decrypts with no exception unless a
record is incomplete, and the replies an application writes while it handles one read go out
as one record.

It offers the application what a TCP transport does (write, writeSequence, loseConnection,
abortConnection, getPeer, getHost, producers, TCP options); it changes nothing beneath it.
Contexts come from L{qmailtx.tls.ServerTLS}.  Writes no files; must not import protocols.
"""

import ssl
from dataclasses import dataclass, field

from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from qmailtx import log
from qmailtx.writethrough import writeNow

READ_SIZE = 64 * 1024
"""Bytes asked of one C{SSLObject.read}: more than a TLS record (16 KiB) holds."""

PENDING_LIMIT = 64 * 1024
"""Bytes an application may write before the handshake is done (a banner, an early reply);
beyond it the connection is dropped rather than buffered without bound."""


@dataclass(frozen=True)
class TLSInfo:
    """
    What a finished handshake agreed on, for Received lines, logs and certificate relaying.

    @ivar version: e.g. C{"TLSv1.3"}.
    @ivar cipher: OpenSSL's name of the suite, e.g. C{"TLS_AES_256_GCM_SHA384"}.
    @ivar peerCertificate: the client certificate as C{SSLObject.getpeercert()} gives it,
        only if one was requested and verified; else empty.
    """

    version: str
    cipher: str
    peerCertificate: dict = field(default_factory=dict)


def tlsInfo(transport):
    """
    The L{TLSInfo} of C{transport} once its handshake is done: a L{TLSServer}, or a
    transport under Twisted's TLS (whose client certificates are never requested), or a
    stand-in with a C{tlsInfo()} method.  C{None} if it cannot tell.
    """
    own = getattr(transport, "tlsInfo", None)
    if own is not None:
        return own()
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    try:
        handle = getHandle()
        cipher = handle.get_cipher_name()
        version = handle.get_protocol_version_name()
    except Exception:
        return None
    if not cipher:
        return None
    return TLSInfo(version or "", cipher)


def startTLS(protocol, creator):
    """
    Start server TLS under C{protocol}, whose C{transport} becomes a L{TLSServer}.

    Only a transport that delivers straight to C{protocol} (a TCP connection) can be layered;
    anything else (a test double, a transport already under Twisted's TLS) is asked to
    C{startTLS(creator)} itself, so C{creator} must also be a pyOpenSSL connection creator.
    @return: the L{TLSServer}, or C{None} if the transport started TLS itself.
    """
    transport = protocol.transport
    if (getattr(transport, "protocol", None) is not protocol
            or not hasattr(creator, "serverObject")):
        transport.startTLS(creator)
        return None
    layer = TLSServer(creator, protocol)
    layer.connected = 1
    layer._attach(transport)
    transport.protocol = layer
    protocol.transport = layer
    return layer


@implementer(ISSLTransport, ITCPTransport)
class TLSServer(Protocol):
    """
    The TLS server side of one connection: the TCP transport's protocol, and the
    application protocol's transport.

    @ivar wrappedProtocol: the application protocol.
    @ivar creator: gives the C{ssl.SSLObject} (L{qmailtx.tls.ServerTLS.serverObject}).
    """

    disconnecting = False
    _handshakeDone = False
    _closed = False
    _shutDown = False
    _producer = None
    _batch = None
    _reason = None

    def __init__(self, creator, wrappedProtocol):
        self.creator = creator
        self.wrappedProtocol = wrappedProtocol
        self._pending = []
        self._pendingSize = 0

    def _attach(self, transport):
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = self.creator.serverObject(self._incoming, self._outgoing)

    def __getattr__(self, name):
        """Whatever else a TCP transport offers (TCP options, getHandle, ...) is its own."""
        if name.startswith("__") or name in ("transport", "_tls"):
            raise AttributeError(name)
        return getattr(self.transport, name)

    # -- as the TCP connection's protocol ---------------------------------------

    def makeConnection(self, transport):
        """Implicit TLS (SMTPS, POP3S): the application starts under encryption."""
        self._attach(transport)
        Protocol.makeConnection(self, transport)

    def connectionMade(self):
        self.wrappedProtocol.makeConnection(self)

    def logPrefix(self):
        logPrefix = getattr(self.wrappedProtocol, "logPrefix", None)
        return (logPrefix() if logPrefix is not None else "TLSServer") + " (TLS)"

    def dataReceived(self, data):
        if self._closed:
            return
        self._incoming.write(data)
        if not self._handshakeDone and not self._handshake():
            return
        self._deliver()

    def connectionLost(self, reason):
        self._closed = True
        self.connected = 0
        self._pending = None
        self._batch = None
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        if wrapped is not None:
            wrapped.connectionLost(self._reason or reason)

    def _handshake(self):
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as e:
            self._fail(e)
            return False
        self._handshakeDone = True
        self._flush()
        pending, self._pending = self._pending, None
        if pending:
            self._send(b"".join(pending))
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        return not self._closed

    def _deliver(self):
        """
        Hand every complete record to the application.  Its writes meanwhile are gathered
        and leave as one record after the last read, so a pipelined batch of commands gets
        its replies in one segment.
        """
        incoming, tls = self._incoming, self._tls
        self._batch = batch = []
        try:
            while not self._closed and (incoming.pending or tls.pending()):
                try:
                    data = tls.read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                except (ssl.SSLError, ValueError) as e:
                    self._fail(e)
                    break
                if not data:
                    self._shutdown()
                    break
                self.wrappedProtocol.dataReceived(data)
        finally:
            if self._batch is batch:
                self._batch = None
        if batch and not self._closed:
            self._send(b"".join(batch))
        else:
            self._flush()

    def _fail(self, error):
        """A handshake or record error: send OpenSSL's alert, then close."""
        if self._closed:
            return
        peer = getattr(self.transport.getPeer(), "host", "unknown")
        log.event(f"tls: {getattr(error, 'reason', None) or error} from {peer}")
        self._reason = Failure(error)
        self._closed = True
        self._flush()
        self.transport.loseConnection()

    def _flush(self):
        out = self._outgoing.read()
        if out:
            writeNow(self.transport, out)

    def _send(self, data):
        try:
            while data:
                data = data[self._tls.write(data):]
        except (ssl.SSLError, ValueError) as e:
            self._fail(e)
            return
        self._flush()

    def _shutdown(self):
        """Say close_notify (not waiting for the peer's) and close the TCP connection."""
        if self._shutDown:
            return
        self._shutDown = True
        self._closed = True
        if self._handshakeDone:
            try:
                self._tls.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._flush()
        self.transport.loseConnection()

    # -- as the application's transport ------------------------------------------

    def write(self, data):
        if self._closed or not data:
            return
        if self._batch is not None:
            self._batch.append(data)
        elif self._handshakeDone:
            self._send(data)
        else:
            self._pendingSize += len(data)
            if self._pendingSize > PENDING_LIMIT:
                log.warning("tls: too much written before the handshake, dropping connection")
                self.abortConnection()
                return
            self._pending.append(data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def loseConnection(self):
        """
        Close after what was written, with a close_notify; while a producer is registered
        (it may still write), only once it is unregistered.
        """
        if self.disconnecting or self._closed:
            return
        self.disconnecting = True
        if self._producer is not None:
            return
        self._finish()

    def _finish(self):
        batch, self._batch = self._batch, None
        if batch:
            self._send(b"".join(batch))
        self._shutdown()

    def abortConnection(self):
        self._closed = True
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def getPeerCertificate(self):
        """Twisted's form (a pyOpenSSL X509) is not kept; L{tlsInfo} has the certificate."""
        return None

    def tlsInfo(self):
        """The L{TLSInfo} of the finished handshake, or C{None} before (or without) one."""
        if not self._handshakeDone:
            return None
        cipher = self._tls.cipher()
        if cipher is None:
            return None
        try:
            peer = self._tls.getpeercert() or {}
        except (ssl.SSLError, ValueError):
            peer = {}
        return TLSInfo(self._tls.version() or "", cipher[0], peer)

    def registerProducer(self, producer, streaming):
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._producer = None
        self.transport.unregisterProducer()
        if self.disconnecting and not self._closed:
            self._finish()

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()


class TLSServerFactory(Factory):
    """Implicit TLS for a whole listener: every protocol of C{wrappedFactory} under L{TLSServer}."""

    noisy = False

    def __init__(self, creator, wrappedFactory):
        self.creator = creator
        self.wrappedFactory = wrappedFactory

    def startFactory(self):
        self.wrappedFactory.doStart()

    def stopFactory(self):
        self.wrappedFactory.doStop()

    def logPrefix(self):
        logPrefix = getattr(self.wrappedFactory, "logPrefix", None)
        return (logPrefix() if logPrefix is not None else "TLSServerFactory") + " (TLS)"

    def buildProtocol(self, addr):
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        layer = TLSServer(self.creator, inner)
        layer.factory = self
        return layer
