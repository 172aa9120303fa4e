"""
One message on its way into qmail's queue (spec/queue.md §3 steps 2–5): L{QueueWriter}
buffers the message, creates C{mess/<id%23>/<id>} (through its L{qmailtx.queue.Queue}) when
bytes must reach disk, writes C{intd/<id>}, and removes its partial files on failure or
abort; the Queue links it to C{todo/}.

Writes C{mess/} and C{intd/} (the queue's files: only the queue modules may import this
one).  Must not import delivery (send, local, remote) or protocol modules.
"""

import os

from twisted.internet.defer import fail

from qmailtx.envelope import EnvelopeError, encodeTodo
from qmailtx.queuefiles import _discard, _failureFor, _Trouble
from qmailtx.safeio import writeAll
from qmailtx.queuelayout import splitName

WRITE_BUFFER = 64 * 1024
"""Message bytes held before one C{write(2)} to C{mess/} (qmail-queue uses 256; a Python
call per 256 bytes would cost more than the disk)."""


class QueueWriter:
    """
    One message on its way into the queue.

    @ivar qp: the number in the Received line and the SMTP reply.
    @ivar msgid: the inode of C{mess/<id%23>/<id>}, the message's id.
    """

    def __init__(self, queue, qp, born, serial=None):
        """C{serial} (default C{qp}) names the C{pid/} file: unique in this process even when
        C{qp} is another process's pid (the queue socket's client)."""
        self._queue = queue
        self.uid = queue._uid
        self.qp = qp
        self._serial = qp if serial is None else serial
        self._born = born
        self.msgid = None
        self._fd = None
        self._intdFd = None
        self._buffer = bytearray()
        self._size = 0
        self._writeFailed = False
        self._state = "open"
        self._madeIntd = False
        self._messPath = None

    def _ensureFile(self):
        """Create C{mess/<id%23>/<id>} if not yet done; raises L{_Trouble}."""
        if self._fd is None and self.msgid is None:
            self.msgid, self._fd = self._queue._createMess(self._serial, self._born)
            self._messPath = os.path.join(
                self._queue.queueDir, "mess", splitName(self.msgid), str(self.msgid))

    def write(self, data):
        """Append message bytes; buffered, so cheap on the reactor thread."""
        if self._state != "open" or self._writeFailed:
            return
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER:
            self._flush()

    def _flush(self):
        try:
            self._ensureFile()
            writeAll(self._fd, self._buffer)
            self._size += len(self._buffer)
        except (OSError, _Trouble) as e:
            self._writeFailed = getattr(e, "code", 53)
        del self._buffer[:]

    def registerProducer(self, producer, streaming):
        """Nothing to pause for: disk writes never back up like a pipe."""

    def unregisterProducer(self):
        pass

    def _checkedTodo(self, sender, recipients):
        if self._state != "open":
            raise _failureFor(81)
        try:
            todo = encodeTodo(self.uid, self.qp, sender, recipients)
        except EnvelopeError as e:
            self._state = "failed"
            self._closeAndCleanup()
            raise _failureFor(e.code)
        self._state = "committing"
        return todo

    def commit(self, sender, recipients):
        """
        Make the message durable and queued; the Deferred fires with L{msgid} once
        C{todo/<id>} and its directory entry are on disk, or fails with a
        L{TempFailure}/L{PermFailure} carrying qmail's text (partial files removed).
        """
        try:
            todo = self._checkedTodo(sender, recipients)
        except Exception as e:
            return fail(e)
        return self._queue._link(self, todo)

    def commitSync(self, sender, recipients):
        """L{commit}, blocking: returns L{msgid} or raises the failure value."""
        todo = self._checkedTodo(sender, recipients)
        try:
            self._prepare(todo)
        except _Trouble as t:
            raise _failureFor(t.code)
        except Exception:
            raise _failureFor(81)
        (code,) = self._queue._linkBatch([self])
        if code is not None:
            raise _failureFor(code)
        self._queue._notifyAll([self.msgid])
        return self.msgid

    def _prepare(self, todo):
        """
        qmail-queue steps 4–5 up to the flush: message written, C{intd/<id>} written.  The
        files stay open; the group commit (L{qmailtx.queue.Queue._startFlush}, or
        L{qmailtx.queue.Queue._linkBatch} for L{commitSync}) makes them durable first.
        """
        try:
            self._ensureFile()
            if self._buffer:
                self._flush()
            if self._writeFailed:
                raise _Trouble(self._writeFailed)
            intd = self._queue._path("intd", self.msgid)
            self._intdFd = self._openIntd(intd)
            self._madeIntd = True
            try:
                writeAll(self._intdFd, todo)
                self._cutRecycled(self._fd, self._size)
                self._cutRecycled(self._intdFd, len(todo))
            except OSError:
                raise _Trouble(53)
        except BaseException:
            self._closeAndCleanup()
            raise

    def _cutRecycled(self, fd, size):
        """A recycled file may hold an older file's bytes past C{size}: cut them off."""
        if fd in self._queue._recycled:
            self._queue._recycled.discard(fd)
            os.ftruncate(fd, size)

    def _closeFiles(self):
        for name in ("_fd", "_intdFd"):
            fd = getattr(self, name)
            if fd is not None:
                self._queue._recycled.discard(fd)
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _openIntd(self, path):
        fd = self._queue._takeSpare(path)
        if fd is not None:
            self._queue._recycled.add(fd)
            return fd
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o644)
        except FileExistsError:
            # We hold mess/<id>, so an intd/<id> can only be left from a dead message
            # whose inode number was reused.
            try:
                os.unlink(path)
                return os.open(path, flags, 0o644)
            except OSError:
                raise _Trouble(65)
        except OSError:
            raise _Trouble(65)

    def _closeAndCleanup(self):
        self._closeFiles()
        self._cleanup()

    def _cleanup(self):
        """Remove the partial files (intd before mess, so no state outside qmail's table)."""
        if self._madeIntd:
            _discard(self._queue._path("intd", self.msgid))
        if self._messPath is not None:
            _discard(self._messPath)

    def abort(self):
        """Drop the message (client gone, too big, refused): its files are removed."""
        if self._state != "open":
            return
        self._state = "aborted"
        del self._buffer[:]
        if self._fd is None and self._messPath is None:
            return
        d = self._queue._blocking(self._closeAndCleanup)
        d.addErrback(lambda f: None)
