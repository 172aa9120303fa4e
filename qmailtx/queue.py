"""
qmail-queue inside the daemon (spec/queue.md §3): the L{Queue} that allocates a message's
id (a C{pid/} file linked to C{mess/}, or a recycled inode from the spare pool), and makes
messages durable and queued in group commits (C{intd/} linked to C{todo/}, C{todo/}
fsync'd), telling its observers (qmail-send) or pulling the trigger.

Owns C{queue/pid}, C{queue/mess}, C{queue/intd} and C{queue/todo} with
L{qmailtx.queuewriter}: together they are the only writers of them.  The file protocol is
qmail-queue's, step for step, so a crash at any instant leaves only the states S1–S4 of
qmail's table and an existing qmail queue stays usable.  The layout is
L{qmailtx.queuelayout}; the durable-write steps L{qmailtx.queuefiles}.  Must not import
delivery (send, local, remote) or protocol modules.
"""

import itertools
import os
import time

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from qmailtx.envelope import receivedLine
from qmailtx.queuefiles import _discard, _failureFor, _fsyncDir, _Trouble, syncFiles
from qmailtx.queuelayout import createLayout, pullTrigger, splitName
from qmailtx.queuewriter import QueueWriter

__all__ = ["Queue", "createLayout"]
"""C{createLayout} stays importable here for bench/, which builds a queue through this module."""

PID_SEQ_LIMIT = 9
"""qmail-queue tries C{pid/<pid>.<time>.1} to C{.9} before giving up with exit 63."""

_log = Logger()


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
        """The queue manager's L{qmailtx.spares.SparePool} when one runs in this process, or
        in a receiver the share it handed over (L{qmailtx.receiverchild.HandedSpares}): new
        pid/ and intd/ files are then recycled inodes instead of fresh allocations."""
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
