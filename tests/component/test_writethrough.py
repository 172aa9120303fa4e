"""writeNow on real loopback TCP sockets: sent at once when idle, queued behind what waits."""

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from qmailtx.writethrough import writeNow


@pytest.fixture
def pair():
    """A Twisted TCP transport on one end of a loopback connection, a plain socket on the other."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    reactor = MemoryReactor()
    transport = tcp.Connection(accepted, Protocol(), reactor)
    transport.connected = 1
    peer.settimeout(5)
    yield transport, peer, reactor
    peer.close()
    accepted.close()


def test_idle_connection_sends_in_the_call(pair):
    transport, peer, reactor = pair
    writeNow(transport, b"250 ok\r\n")
    assert peer.recv(100) == b"250 ok\r\n"
    assert transport not in reactor.getWriters()
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""


def test_queued_data_keeps_its_place(pair):
    transport, peer, reactor = pair
    transport.write(b"first\r\n")
    writeNow(transport, b"second\r\n")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    assert transport in reactor.getWriters()
    transport.doWrite()
    peer.settimeout(5)
    assert peer.recv(100) == b"first\r\nsecond\r\n"


def test_what_the_socket_does_not_take_is_queued(pair):
    transport, peer, reactor = pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4000
    writeNow(transport, data)
    assert transport in reactor.getWriters()
    assert 0 < len(transport.dataBuffer) + transport._tempDataLen < len(data)
    received = bytearray()
    peer.settimeout(0.05)
    for _ in range(10000):
        if len(received) == len(data):
            break
        transport.doWrite()
        try:
            received += peer.recv(1 << 20)
        except TimeoutError:
            pass
    assert bytes(received) == data
    assert transport not in reactor.getWriters()


@pytest.mark.parametrize("state", ["disconnecting", "TLS", "_aborting"])
def test_closing_or_tls_transport_gets_its_own_write(pair, state):
    transport, peer, reactor = pair
    written = []
    transport.write = written.append
    setattr(transport, state, True)
    writeNow(transport, b"221 bye\r\n")
    assert written == [b"221 bye\r\n"]


def test_other_transports_get_their_own_write():
    transport = StringTransport()
    writeNow(transport, b"220 hi\r\n")
    assert transport.value() == b"220 hi\r\n"


def test_error_leaves_the_data_to_the_transport(pair):
    """A send that fails (peer reset) hands the data to Twisted, which reports the loss."""
    transport, peer, reactor = pair
    written = []
    transport.write = written.append

    class Broken:
        def send(self, data):
            raise ConnectionResetError()

    real, transport.socket = transport.socket, Broken()
    try:
        writeNow(transport, b"250 ok\r\n")
    finally:
        transport.socket = real
    assert written == [b"250 ok\r\n"]
