"""
Appending one message to an mbox file as qmail-local does (spec/local.md §7, mbox row).

Writes only the mbox file it is given (created 0600); on a write failure the file is cut
back to its old size when we hold the lock, so a half message never stays.  Blocking:
meant for the delivery process.  Must not import the queue, Twisted or sockets.
"""

import errno
import fcntl
import os
import time

from qmailtx.dotqmail import errorStr
from qmailtx.results import TempFailure

LOCK_WAIT = 30
"""Seconds qmail-local waits for the exclusive lock before deferring."""

LOCK_POLL = 0.05
"""Seconds between lock attempts while someone else holds it."""

LINE_CHUNK = 65536
"""Bytes read per piece of a line; only a line's first piece is checked for C{From }."""

WRITE_BUFFER = 65536
"""Bytes collected before each C{write}."""

SLOW_LOCK = TempFailure(b"File has been locked for 30 seconds straight. (#4.3.0)\n")


def needsQuoting(line):
    """qmail's C{gfrom()}: does the line match C{^>*From }?"""
    return line.lstrip(b">").startswith(b"From ")


def _lock(fd, wait, clock, sleep):
    """Take an exclusive flock: C{True} locked, C{False} unsupported; raises L{SLOW_LOCK}."""
    deadline = clock() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                return False
        if clock() >= deadline:
            raise SLOW_LOCK
        sleep(LOCK_POLL)


class _WriteFailed(Exception):
    """The mbox could not be written (its errno): kept apart from the message's read errors,
    which the copy loop raises as C{OSError}."""

    def __init__(self, errno):
        Exception.__init__(self, errno)
        self.errno = errno


class _Writer:
    def __init__(self, fd):
        self.fd = fd
        self.buffer = bytearray()

    def write(self, data):
        self.buffer += data
        if len(self.buffer) >= WRITE_BUFFER:
            self.flush()

    def flush(self):
        done = 0
        try:
            with memoryview(self.buffer) as view:
                while done < len(view):
                    done += os.write(self.fd, view[done:])
        except OSError as e:
            raise _WriteFailed(e.errno)
        del self.buffer[:]


def _copyQuoted(message, out):
    """Copy lines, C{>}-quoting C{From } lines; a missing final newline is added."""
    atStart = True
    piece = b""
    while True:
        piece = message.readline(LINE_CHUNK)
        if not piece:
            break
        if atStart and needsQuoting(piece):
            out.write(b">")
        out.write(piece)
        atStart = piece.endswith(b"\n")
    if not atStart:
        out.write(b"\n")


def _truncate(fd, position):
    try:
        os.ftruncate(fd, position)
    except OSError:
        pass


def deliver(path, headers, message, lockWait=LOCK_WAIT, clock=time.monotonic,
            sleep=time.sleep):
    """
    Append C{headers} (UFLINE, RPLINE, DTLINE), then C{message} from its start with
    mboxrd quoting, then a blank line, and fsync.

    @param path: the file name as written in the C{.qmail} line (bytes).
    @param message: a seekable binary file.
    @raise TempFailure: with qmail-local's texts for open, lock, read and write errors.
    """
    try:
        message.seek(0)
    except OSError:
        raise TempFailure(b"Unable to rewind message. (#4.3.0)\n")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise TempFailure(b"Unable to open " + path + b": " + errorStr(e.errno) + b". (#4.2.1)\n")
    try:
        locked = _lock(fd, lockWait, clock, sleep)
        position = os.lseek(fd, 0, os.SEEK_END)
        out = _Writer(fd)
        try:
            out.write(headers)
            try:
                _copyQuoted(message, out)
            except OSError as e:
                if locked:
                    _truncate(fd, position)
                raise TempFailure(b"Unable to read message: " + errorStr(e.errno) + b". (#4.3.0)\n")
            out.write(b"\n")
            out.flush()
            os.fsync(fd)
        except (OSError, _WriteFailed) as e:
            if locked:
                _truncate(fd, position)
            raise TempFailure(b"Unable to write " + path + b": " + errorStr(e.errno) + b". (#4.3.0)\n")
    finally:
        os.close(fd)
