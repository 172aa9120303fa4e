"""
Writes that reach the socket in the same call when nothing is queued before them.

Twisted's TCP transport queues every write and sends it on a later pass of the reactor: it
registers the socket for writability with epoll, waits for the next poll, sends, and
unregisters it again.  That is two C{epoll_ctl} calls and one more loop pass for every reply
of a protocol that answers one short line per command, as SMTP, QMTP and QMQP do, while the
socket's buffer is nearly always empty.  L{writeNow} sends at once in that case and leaves
every other case (data already queued, a partial send, an error, a closing, aborted or TLS
transport,
anything that is not a plain TCP connection) to the transport's own C{write}, so ordering,
flow control and error handling stay Twisted's.  Decides nothing; must not import protocols.
"""

from twisted.internet import tcp


def writeNow(transport, data):
    """
    Write C{data} on C{transport}: straight to its socket if it is an idle plain TCP
    connection, else (or for what the socket does not take at once) with C{transport.write}.
    """
    if (
        data
        and isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "_aborting", False)
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
