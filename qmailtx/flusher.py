"""
The flusher: a small process that makes the queue's filesystem durable (syncfs(2)) when
the daemon or a receiver asks, so the group commits of L{qmailtx.queue} and of qmail-send's
preprocessing wait for the disk without a thread in their own process.

Why a process: a flush in a worker thread of the reactor's process made that thread and
the reactor trade the interpreter lock at every system call the reactor made meanwhile
(strace: ten futex calls per message in a receiver).  Asking over a socket costs one send
and one readable event per flush.  Measured at 10 clients, 10 messages per connection:
10% more messages per second and 10% less CPU per message than the thread.

Protocol on a C{SOCK_SEQPACKET} pair: each C{f} packet asks for a flush; the flusher reads
every request waiting, runs one syncfs that began after all of them, and answers each
with C{k} (done) or C{e} (failed), in order.  A request is answered only by a syncfs
that started after it arrived, so whatever the asker wrote before asking is durable when
its C{k} comes.  EOF ends the flusher.  The asking end is L{qmailtx.flushclient}.  Must
not import Twisted (a small process), protocol or delivery modules.
"""

import os
import signal
import socket
import sys

from qmailtx.queuefiles import _syncfs

REQUEST = b"f"
DONE = b"k"
FAILED = b"e"
FLUSHER_FD = 3
"""The flusher's end of the socket pair, in the flusher process."""


def serve(sock, syncfs, dirFd):
    """
    Answer flush requests on C{sock} until EOF: block for one, take every request already
    waiting, flush once, answer each.  Returns when the other end closes.
    """
    while True:
        sock.setblocking(True)
        try:
            first = sock.recv(16)
        except OSError:
            return
        if not first:
            return
        waiting = 1
        sock.setblocking(False)
        while True:
            try:
                more = sock.recv(16)
            except BlockingIOError:
                break
            except OSError:
                return
            if not more:
                break
            waiting += 1
        try:
            syncfs(dirFd)
            answer = DONE
        except OSError:
            answer = FAILED
        sock.setblocking(True)
        try:
            for _ in range(waiting):
                sock.send(answer)
        except OSError:
            return


def main(argv):
    """C{qmailtx flusher QUEUEDIR} with the socket on fd 3 (started by the daemon or a receiver)."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # A signal to the whole group (Ctrl-C, a supervisor's stop) is for the daemon: the
        # flusher answers what it was asked and ends at EOF.
        signal.signal(number, signal.SIG_IGN)
    if len(argv) != 2 or _syncfs is None:
        sys.stderr.write("flusher: usage: qmailtx flusher QUEUEDIR (socket on fd 3)\n")
        return 100
    try:
        dirFd = os.open(argv[1], os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(fileno=FLUSHER_FD)
    except OSError as e:
        sys.stderr.write(f"flusher: fatal: unable to open {argv[1]}: {e.strerror}\n")
        return 111
    serve(sock, _syncfs, dirFd)
    return 0
