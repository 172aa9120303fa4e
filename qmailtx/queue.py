"""
qmail's on-disk queue (spec/queue.md §2–3): its layout and the writer side of it.

Owns C{queue/pid}, C{queue/mess}, C{queue/intd} and C{queue/todo}: it is the only writer
of them, and it creates (but never later writes) the rest of the layout.  The file
protocol is qmail-queue's, step for step, so a crash at any instant leaves only the states
S1–S4 of qmail's table and an existing qmail queue stays usable.  Must not import
delivery (send, local, remote) or protocol modules.
"""

import itertools
import os
import stat
import time

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from qmailtx.envelope import EnvelopeError, encodeTodo, receivedLine
from qmailtx.results import qqExitFailure
from qmailtx.safeio import writeAtomically

SPLIT = 23
WRITE_BUFFER = 64 * 1024
"""Message bytes held before one C{write(2)} to C{mess/} (qmail-queue uses 256; a Python
call per 256 bytes would cost more than the disk)."""
PID_SEQ_LIMIT = 9
"""qmail-queue tries C{pid/<pid>.<time>.1} to C{.9} before giving up with exit 63."""

_SPLIT_DIRS = (("mess", 0o750), ("info", 0o700), ("local", 0o700), ("remote", 0o700))
_PLAIN_DIRS = (("pid", 0o700), ("intd", 0o700), ("todo", 0o750), ("bounce", 0o700))
TCPTO_SIZE = 1024

_log = Logger()


def _own(path, uid, gid):
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def _dir(path, mode, uid, gid):
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    os.chmod(path, mode)
    _own(path, uid, gid)


def createLayout(queueDir, uid=None, gid=None):
    """
    Create every directory and lock file of qmail's queue under C{queueDir} (the path
    of C{queue/} itself), with the modes of qmail's C{hier.c}.

    Idempotent: what exists keeps its content (an existing C{tcpto} table or C{trigger}
    FIFO is not replaced) and gets the right mode and owner.  C{uid}/C{gid}, when given,
    own everything (qmailtx runs the queue under one account; qmail used four).
    Raises C{OSError}.
    """
    _dir(queueDir, 0o750, uid, gid)
    for name, mode in _PLAIN_DIRS:
        _dir(os.path.join(queueDir, name), mode, uid, gid)
    for name, mode in _SPLIT_DIRS:
        top = os.path.join(queueDir, name)
        _dir(top, mode, uid, gid)
        for i in range(SPLIT):
            _dir(os.path.join(top, str(i)), mode, uid, gid)
    lock = os.path.join(queueDir, "lock")
    _dir(lock, 0o750, uid, gid)

    tcpto = os.path.join(lock, "tcpto")
    if not os.path.exists(tcpto):
        writeAtomically(tcpto, b"\0" * TCPTO_SIZE)
    os.chmod(tcpto, 0o644)
    _own(tcpto, uid, gid)

    mutex = os.path.join(lock, "sendmutex")
    if not os.path.exists(mutex):
        writeAtomically(mutex, b"")
    os.chmod(mutex, 0o600)
    _own(mutex, uid, gid)

    trigger = os.path.join(lock, "trigger")
    try:
        st = os.lstat(trigger)
    except FileNotFoundError:
        os.mkfifo(trigger, 0o622)
    else:
        if not stat.S_ISFIFO(st.st_mode):
            os.unlink(trigger)
            os.mkfifo(trigger, 0o622)
    os.chmod(trigger, 0o622)
    _own(trigger, uid, gid)


def splitName(msgid):
    """The split subdirectory name (C{str}) of message C{msgid}."""
    return str(msgid % SPLIT)


def pullTrigger(queueDir):
    """
    Wake qmail-send: one byte to C{lock/trigger} without blocking; nobody listening,
    a full pipe or a missing FIFO are all fine (qmail's C{triggerpull}).
    """
    try:
        fd = os.open(os.path.join(queueDir, "lock", "trigger"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)


class _Trouble(Exception):
    """A step failed; C{code} is qmail-queue's exit code for it."""

    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def _failureFor(code):
    return qqExitFailure(code)


GROUP_SYNC_MIN = 2
"""Batches at least this large are made durable with one syncfs(2) instead of two fsyncs a
message: one journal commit for the whole group is what lets concurrent SMTP sessions share
the disk's flush latency."""


def _loadSyncfs():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]

    def call(fd):
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return call


_syncfs = _loadSyncfs()


def syncFiles(queueDir, fds):
    """
    Make the files open as C{fds} durable: one syncfs(2) of the queue's filesystem for
    two or more (a single journal commit), else fsync each.  Raises C{OSError}.
    """
    if _syncfs is not None and len(fds) >= GROUP_SYNC_MIN:
        dirFd = os.open(queueDir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _syncfs(dirFd)
        finally:
            os.close(dirFd)
        return
    for fd in fds:
        os.fsync(fd)


def _fsyncDir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path):
    """qmail-queue's cleanup of a partial file: truncate (frees space even if unlink fails), unlink."""
    try:
        os.truncate(path, 0)
        os.unlink(path)
    except OSError:
        pass


def _writeAll(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Queue:
    """
    qmail-queue inside the daemon: C{begin()} a message, stream it in, C{commit()} it.

    Like qmail, this relies on the filesystem committing the C{mess/} and C{intd/} links
    no later than the C{todo/} link (ext4's journal does); unlike qmail it also fsyncs
    C{todo/}, so a reported success survives power loss.  Directory fsyncs of concurrent
    commits are grouped: while one batch of C{todo/} links is being made durable, the
    next batch gathers.

    @ivar queueDir: C{<root>/queue} (C{str}).
    """

    def __init__(self, root, reactor=None, runBlocking=None):
        """
        @param runBlocking: C{f(callable, *args) -> Deferred} running blocking disk work
            off the reactor thread; default the reactor's thread pool.  Tests pass a
            synchronous one.
        """
        self.root = os.fsdecode(root)
        self.queueDir = os.path.join(self.root, "queue")
        self._reactor = reactor
        self._runBlocking = runBlocking
        self._observers = []
        self.spares = None
        """The queue manager's L{qmailtx.spares.SparePool}, when one runs in this process:
        new pid/ and intd/ files are then recycled inodes instead of fresh allocations."""
        self._qps = itertools.count(os.getpid())
        self._uid = os.getuid()
        self._gathering = []
        self._linking = False
        self._recycled = set()

    def _getReactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def _blocking(self, f, *args):
        if self._runBlocking is not None:
            return self._runBlocking(f, *args)
        reactor = self._getReactor()
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def _seconds(self):
        return self._reactor.seconds() if self._reactor is not None else time.time()

    def addObserver(self, observer):
        """Call C{observer(msgid)} on the reactor thread after each message reaches C{todo/}."""
        self._observers.append(observer)

    def notifyQueued(self, msgid):
        """C{todo/<msgid>} was made by another process of this daemon (a receiver)."""
        self._notify(msgid)

    def _notify(self, msgid):
        for observer in list(self._observers):
            try:
                observer(msgid)
            except Exception:
                _log.failure("queue observer failed")

    def begin(self, how, eager=False, uid=None):
        """
        Start a message: allocate its qp and write the Received line (into memory).

        The files of qmail-queue steps 2–3 (a C{pid/} file linked to
        C{mess/<id%23>/<id>}) are made when the first buffer's worth must reach disk, which
        for most messages is inside L{QueueWriter.commit}: a message refused or dropped
        before its end then costs no file at all.  Trouble surfaces as the commit's failure.
        C{eager} makes the files at once, as the C{qmail-queue} command must (its exit code
        tells which step failed); then begin() raises L{TempFailure} on trouble.
        C{uid} is the injecting user for the C{todo/} C{u} record (default this process's
        uid; the queue socket passes its client's).
        """
        qp = next(self._qps)
        now = self._seconds()
        writer = QueueWriter(self, qp, int(now))
        if uid is not None:
            writer.uid = uid
        if eager:
            try:
                writer._ensureFile()
            except _Trouble as t:
                raise _failureFor(t.code)
        writer.write(receivedLine(qp, how, now))
        return writer

    def _createMess(self, qp, now):
        """qmail-queue steps 2–3: returns C{(msgid, fd)}; raises L{_Trouble}."""
        fd, pidPath = self._openPid(qp, now)
        msgid = os.fstat(fd).st_ino
        messPath = os.path.join(self.queueDir, "mess", splitName(msgid), str(msgid))
        try:
            os.link(pidPath, messPath)
        except OSError:
            os.close(fd)
            _discard(pidPath)
            raise _Trouble(64)
        try:
            os.unlink(pidPath)
        except OSError:
            os.close(fd)
            _discard(messPath)
            _discard(pidPath)
            raise _Trouble(63)
        return msgid, fd

    def _takeSpare(self, path):
        """
        A recycled inode from the queue manager's spare pool, renamed to C{path} and
        opened at offset 0 (mode 0644 as qmail-queue's files), or C{None}.  Its old content
        is still there: the writer cuts it to length before the flush (emptying it here
        would make the reactor wait for the disk's discard of its blocks).  The caller makes
        sure nothing else can be using C{path}.
        """
        if self.spares is None:
            return None
        fd = self.spares.take(path, truncate=False)
        if fd is not None:
            try:
                os.fchmod(fd, 0o644)
            except OSError:
                pass
        return fd

    def _openPid(self, qp, now):
        # A spare arrives by rename, which would replace a file of the same name: its pid/
        # name carries this process's own pid and an "s", a name no qmail-queue uses.
        spare = os.path.join(self.queueDir, "pid", "%d.%d.s%d" % (os.getpid(), now, qp))
        fd = self._takeSpare(spare)
        if fd is not None:
            self._recycled.add(fd)
            return fd, spare
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for seq in range(1, PID_SEQ_LIMIT + 1):
            path = os.path.join(self.queueDir, "pid", "%d.%d.%d" % (qp, now, seq))
            try:
                return os.open(path, flags, 0o644), path
            except FileExistsError:
                continue
            except OSError:
                raise _Trouble(63 if os.path.isdir(self.queueDir) else 62)
        raise _Trouble(63)

    def _path(self, kind, msgid):
        return os.path.join(self.queueDir, kind, str(msgid))

    def _link(self, writer, todo):
        """
        Queue C{writer} (with its C{todo} record bytes) for the next group commit; a
        Deferred fires with its id.

        The cheap steps (creating and writing files, linking) run here on the reactor
        thread; only the two flushes of a group go to a worker thread, one trip each.  A
        worker thread that made every small system call itself would trade the interpreter
        lock with the reactor thread at each one: measured, that hand-over (futex wake-ups
        and context switches) cost more CPU than the disk work it moved.
        """
        try:
            writer._prepare(todo)
        except _Trouble as t:
            return fail(_failureFor(t.code))
        except Exception:
            return fail(_failureFor(81))
        d = Deferred()
        self._gathering.append((writer, d))
        if not self._linking:
            self._startBatch()
        return d

    def _startBatch(self):
        batch, self._gathering = self._gathering, []
        self._linking = True
        d = self._blocking(self._syncData, [w for w, _ in batch])
        d.addBoth(self._cbDataSynced, batch)

    def _cbDataSynced(self, result, batch):
        synced = not isinstance(result, Failure)
        if not synced:
            _log.failure("flushing queued messages failed", result)
        codes = self._linkTodo([w for w, _ in batch], synced)
        if all(code is not None for code in codes):
            self._batchDone(codes, batch)
            return
        d = self._blocking(self._syncTodo)
        d.addBoth(self._cbTodoSynced, codes, batch)

    def _cbTodoSynced(self, result, codes, batch):
        if isinstance(result, Failure):
            # The links exist and qmail-send may take them: never remove them now.
            codes = [53 if code is None else code for code in codes]
        self._announce(codes)
        self._batchDone(codes, batch)

    def _batchDone(self, codes, batch):
        self._linking = False
        for (writer, d), code in zip(batch, codes):
            if code is None:
                d.callback(writer.msgid)
                self._notify(writer.msgid)
            else:
                d.errback(_failureFor(code))
        if self._gathering:
            self._startBatch()

    def _linkBatch(self, writers):
        """
        qmail-queue steps 4–6 for a group, blocking: make every message and C{intd} file
        durable (one syncfs for a large group, else each file's fsync), link C{intd} to
        C{todo}, and fsync C{todo/} once (the step qmail leaves to the filesystem).  Returns
        a code (or C{None}) per writer.
        """
        try:
            self._syncData(writers)
        except OSError:
            synced = False
        else:
            synced = True
        codes = self._linkTodo(writers, synced)
        if any(code is None for code in codes):
            try:
                self._syncTodo()
            except OSError:
                codes = [53 if code is None else code for code in codes]
            self._announce(codes)
        return codes

    def _linkTodo(self, writers, synced):
        """
        qmail-queue step 6 for the writers whose files are durable (C{synced}): C{intd}
        linked to C{todo}.  Every file is closed; a writer that fails is cleaned up.
        """
        codes = [None if synced else 53] * len(writers)
        for i, writer in enumerate(writers):
            writer._closeFiles()
            if codes[i] is not None:
                writer._cleanup()
                continue
            try:
                os.link(self._path("intd", writer.msgid), self._path("todo", writer.msgid))
            except OSError:
                writer._cleanup()
                codes[i] = 66
        return codes

    def _syncTodo(self):
        _fsyncDir(os.path.join(self.queueDir, "todo"))

    def _announce(self, codes):
        """Wake a qmail-send in another process; one in this process hears L{_notify}."""
        if not self._observers and any(code is None for code in codes):
            pullTrigger(self.queueDir)

    def _syncData(self, writers):
        syncFiles(self.queueDir, [fd for w in writers for fd in (w._fd, w._intdFd)])


class QueueWriter:
    """
    One message on its way into the queue.

    @ivar qp: the number in the Received line and the SMTP reply.
    @ivar msgid: the inode of C{mess/<id%23>/<id>}, the message's id.
    """

    def __init__(self, queue, qp, born):
        self._queue = queue
        self.uid = queue._uid
        self.qp = qp
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
            self.msgid, self._fd = self._queue._createMess(self.qp, self._born)
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
            _writeAll(self._fd, self._buffer)
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
        self._queue._notify(self.msgid)
        return self.msgid

    def _prepare(self, todo):
        """
        qmail-queue steps 4–5 up to the flush: message written, C{intd/<id>} written.  The
        files stay open; the group link (L{Queue._linkBatch}) makes them durable first.
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
                _writeAll(self._intdFd, todo)
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
