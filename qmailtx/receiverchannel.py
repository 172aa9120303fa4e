"""
The channel between the daemon and a receiver process (L{qmailtx.receiver}): a
C{SOCK_SEQPACKET} socket carrying one message per packet, each with at most one descriptor
(a client connection handed over).  It moves packets and descriptors; what they mean is the
receiver modules' business.  Must not import protocol or queue modules.
"""

import collections
import os
import socket

PACKET_LIMIT = 64 * 1024
"""Largest channel message (early bytes are at most the rules layer's 16 KiB)."""
FDS_PER_PACKET = 1


class Channel:
    """
    One end of a channel: packets with at most one descriptor each, queued while the socket
    is full.  C{received(packet, fds)} is called for each incoming packet, C{closed()} once.
    """

    def __init__(self, sock, reactor, received, closed):
        sock.setblocking(False)
        self.sock = sock
        self.reactor = reactor
        self.received = received
        self.closed = closed
        self._out = collections.deque()
        self._open = True
        reactor.addReader(self)

    def fileno(self):
        return self.sock.fileno() if self._open else -1

    def logPrefix(self):
        return "receiver channel"

    def send(self, packet, fd=None):
        """
        Send one packet (with C{fd}).  While the socket is full it waits in order, with a
        duplicate of C{fd}, so the caller may close its own at once either way.
        """
        if not self._open:
            return False
        if not self._out:
            try:
                self._sendOne(packet, fd)
                return True
            except BlockingIOError:
                pass
            except OSError:
                self._shut()
                return False
        self._out.append((packet, None if fd is None else os.dup(fd)))
        if len(self._out) == 1:
            self.reactor.addWriter(self)
        return True

    def _sendOne(self, packet, fd):
        if fd is None:
            self.sock.send(packet)
        else:
            socket.send_fds(self.sock, [packet], [fd])

    def doWrite(self):
        while self._out:
            packet, fd = self._out[0]
            try:
                self._sendOne(packet, fd)
            except BlockingIOError:
                return
            except OSError:
                self._shut()
                return
            self._out.popleft()
            if fd is not None:
                os.close(fd)
        self.reactor.removeWriter(self)

    def doRead(self):
        while self._open:
            try:
                packet, fds, flags, _ = socket.recv_fds(self.sock, PACKET_LIMIT, FDS_PER_PACKET)
            except BlockingIOError:
                return
            except OSError:
                self._shut()
                return
            if not packet and not fds:
                self._shut()
                return
            try:
                self.received(packet, fds)
            finally:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def connectionLost(self, reason):
        self._shut()

    def close(self):
        self._shut()

    def _shut(self):
        if not self._open:
            return
        self._open = False
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        for _, fd in self._out:
            if fd is not None:
                os.close(fd)
        self._out.clear()
        self.sock.close()
        self.closed()
