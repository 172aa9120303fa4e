"""
The TLS layer of qmailtx.tlstransport over a StringTransport, driven by a client
ssl.SSLObject: STARTTLS and implicit TLS, replies gathered per read, writes held until the
handshake, close_notify both ways, failures, and the fallback to a transport's own startTLS.
"""

import ssl

import pytest
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from qmailtx import tls, tlstransport

APPLICATION_DATA = 0x17


@pytest.fixture(scope="module")
def serverTLS(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "servercert.pem"
    path.write_bytes(tls.selfSignedPEM(b"mx.example.com"))
    return tls.ServerTLS(str(path))


class TCP(StringTransport):
    """A TCP transport as Twisted's: it delivers to C{protocol}."""

    protocol = None
    aborted = False
    ownTLS = None

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def startTLS(self, creator):
        self.ownTLS = creator


@implementer(IHandshakeListener)
class Echo(Protocol):
    """Answers every read with one line per line received; records what happened."""

    def __init__(self):
        self.received = []
        self.handshakes = 0
        self.lost = None

    def dataReceived(self, data):
        self.received.append(data)
        for line in data.split(b"\r\n")[:-1]:
            self.transport.write(b"250 " + line + b"\r\n")

    def handshakeCompleted(self):
        self.handshakes += 1

    def connectionLost(self, reason):
        self.lost = reason


class Client:
    """A TLS client in memory; C{pump} moves bytes both ways until nothing moves."""

    def __init__(self, tcp):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing)
        self.tcp = tcp
        self.wire = b""
        self.closeNotify = False

    def handshake(self):
        for _ in range(10):
            try:
                self.obj.do_handshake()
                self.pump()
                return
            except ssl.SSLWantReadError:
                self.pump()
        raise AssertionError("handshake did not finish")

    def pump(self):
        out = self.outgoing.read()
        if out:
            self.tcp.protocol.dataReceived(out)
        back = self.tcp.value()
        self.tcp.clear()
        self.wire += back
        self.incoming.write(back)

    def send(self, data):
        self.obj.write(data)
        self.pump()

    def read(self):
        data = b""
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    self.closeNotify = True
                    break
                data += chunk
        except ssl.SSLZeroReturnError:
            self.closeNotify = True
        except ssl.SSLWantReadError:
            pass
        return data


def records(wire):
    """The content types of the TLS records in C{wire}."""
    types = []
    while len(wire) >= 5:
        types.append(wire[0])
        wire = wire[5 + int.from_bytes(wire[3:5], "big"):]
    return types


def starttls(serverTLS):
    tcp = TCP()
    app = Echo()
    tcp.protocol = app
    app.makeConnection(tcp)
    layer = tlstransport.startTLS(app, serverTLS)
    return tcp, app, layer


def test_starttls_replaces_the_transport_and_answers(serverTLS):
    """startTLS puts a TLSServer between TCP and the protocol; a line crosses both ways."""
    tcp, app, layer = starttls(serverTLS)
    assert app.transport is layer and tcp.protocol is layer
    assert ISSLTransport.providedBy(layer)
    client = Client(tcp)
    client.handshake()
    assert app.handshakes == 1
    client.send(b"NOOP\r\n")
    assert app.received == [b"NOOP\r\n"]
    assert client.read() == b"250 NOOP\r\n"


def test_pipelined_replies_leave_as_one_record(serverTLS):
    """Three commands in one record get their three replies in one application record."""
    tcp, app, layer = starttls(serverTLS)
    client = Client(tcp)
    client.handshake()
    client.wire = b""
    client.send(b"MAIL\r\nRCPT\r\nDATA\r\n")
    assert records(client.wire) == [APPLICATION_DATA]
    assert client.read() == b"250 MAIL\r\n250 RCPT\r\n250 DATA\r\n"


def test_record_split_across_reads(serverTLS):
    """A record arriving a byte at a time is delivered once, when it is complete."""
    tcp, app, layer = starttls(serverTLS)
    client = Client(tcp)
    client.handshake()
    client.obj.write(b"HELP\r\n")
    record = client.outgoing.read()
    for i in range(len(record)):
        layer.dataReceived(record[i:i + 1])
    assert app.received == [b"HELP\r\n"]


def test_implicit_tls_holds_the_banner(serverTLS):
    """Under TLSServerFactory a banner written at connection time leaves after the handshake."""

    class Banner(Echo):
        def connectionMade(self):
            self.transport.write(b"220 hello\r\n")

    factory = tlstransport.TLSServerFactory(serverTLS, Factory.forProtocol(Banner))
    layer = factory.buildProtocol(None)
    tcp = TCP()
    tcp.protocol = layer
    layer.makeConnection(tcp)
    assert layer.connected and tcp.value() == b""
    client = Client(tcp)
    client.handshake()
    assert client.read() == b"220 hello\r\n"


def test_too_much_before_the_handshake_aborts(serverTLS):
    """Writes before the handshake are bounded by PENDING_LIMIT."""
    tcp, app, layer = starttls(serverTLS)
    layer.write(b"x" * tlstransport.PENDING_LIMIT)
    assert not tcp.aborted
    layer.write(b"x")
    assert tcp.aborted


def test_plaintext_instead_of_hello_fails(serverTLS):
    """Plaintext after STARTTLS: an alert, the TCP connection closed, the SSL error reported."""
    tcp, app, layer = starttls(serverTLS)
    layer.dataReceived(b"RCPT TO:<a@example.com>\r\n" * 4)
    assert tcp.disconnecting
    layer.connectionLost(None)
    assert app.received == []
    assert isinstance(app.lost.value, ssl.SSLError)


def test_lose_connection_says_close_notify(serverTLS):
    """loseConnection sends what was written, then close_notify, then closes TCP."""
    tcp, app, layer = starttls(serverTLS)
    client = Client(tcp)
    client.handshake()
    layer.write(b"221 bye\r\n")
    layer.loseConnection()
    assert tcp.disconnecting
    client.pump()
    assert client.read() == b"221 bye\r\n"
    assert client.closeNotify


def test_lose_connection_waits_for_the_producer(serverTLS):
    """With a producer registered the close waits for unregisterProducer (it may still write)."""
    tcp, app, layer = starttls(serverTLS)
    client = Client(tcp)
    client.handshake()

    class Producer:
        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    layer.registerProducer(Producer(), True)
    assert tcp.producer is not None
    layer.loseConnection()
    assert not tcp.disconnecting
    layer.write(b"last\r\n")
    layer.unregisterProducer()
    assert tcp.disconnecting and tcp.producer is None
    client.pump()
    assert client.read() == b"last\r\n"


def test_client_close_notify_closes(serverTLS):
    """The client's close_notify is answered and the connection closed."""
    tcp, app, layer = starttls(serverTLS)
    client = Client(tcp)
    client.handshake()
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    client.pump()
    assert tcp.disconnecting
    client.obj.unwrap()


def test_quit_inside_a_read(serverTLS):
    """A reply and loseConnection from inside dataReceived: the reply, then close_notify."""

    class Quit(Echo):
        def dataReceived(self, data):
            self.transport.write(b"221 bye\r\n")
            self.transport.loseConnection()
            self.transport.write(b"too late\r\n")

    tcp = TCP()
    app = Quit()
    tcp.protocol = app
    app.makeConnection(tcp)
    tlstransport.startTLS(app, serverTLS)
    client = Client(tcp)
    client.handshake()
    client.send(b"QUIT\r\n")
    assert tcp.disconnecting
    assert client.read() == b"221 bye\r\n"
    assert client.closeNotify


def test_transport_methods_reach_tcp(serverTLS):
    """getPeer, getHost, flow control and TCP options are the TCP transport's."""
    tcp, app, layer = starttls(serverTLS)
    assert layer.getPeer() == tcp.getPeer() and layer.getHost() == tcp.getHost()
    layer.pauseProducing()
    assert tcp.producerState == "paused"
    layer.resumeProducing()
    assert tcp.producerState == "producing"
    layer.setTcpNoDelay(True)
    assert tcp.noDelay is True
    assert layer.getPeerCertificate() is None


def test_other_transports_start_tls_themselves(serverTLS):
    """A transport that does not deliver to the protocol is asked to startTLS itself."""
    tcp = TCP()
    app = Echo()
    app.makeConnection(tcp)
    assert tlstransport.startTLS(app, serverTLS) is None
    assert tcp.ownTLS is serverTLS and app.transport is tcp
