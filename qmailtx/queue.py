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

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from qmailtx.envelope import receivedLine
from qmailtx.flushclient import flushVia
from qmailtx.queuefiles import _discard, _failureFor, _Trouble, syncFiles
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
    C{todo/}, so a reported success survives power loss.  Concurrent commits share
    flushes: while one flush runs the next group gathers, and each flush serves two groups
    (L{_startFlush}).

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
        self.flusher = None
        """A L{qmailtx.flushclient.FlushClient} the service starts; without one (or after it
        ends) flushes run in the reactor's thread pool."""
        self._unprepared = []
        self._gathering = []
        self._linked = []
        self._flushing = False
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
        """
        Call C{observer(msgids)} on the reactor thread when messages reach C{todo/}: a
        list, one group commit's at a time, so that a receiver tells the daemon of a
        group in one packet.
        """
        self._observers.append(observer)

    def removeObserver(self, observer):
        """
        Stop calling C{observer}.  With none left, a message queued from then on pulls
        C{lock/trigger}, for the qmail-send that runs next (a stopping daemon still
        finishes the commits in flight; a new one may be up already).
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def notifyQueued(self, msgids):
        """C{todo/<msgid>} for each of C{msgids} was made by another process of this daemon (a receiver)."""
        self._notifyAll(msgids)

    def _notifyAll(self, msgids):
        for observer in list(self._observers):
            try:
                observer(msgids)
            except Exception:
                _log.failure("queue observer failed")

    def begin(self, how, eager=False, uid=None, qp=None):
        """
        Start a message: allocate its qp and write the Received line (into memory).

        The files of qmail-queue steps 2–3 (a C{pid/} file linked to
        C{mess/<id%23>/<id>}) are made when the first buffer's worth must reach disk, which
        for most messages is inside L{QueueWriter.commit}: a message refused or dropped
        before its end then costs no file at all.  Trouble surfaces as the commit's failure.
        C{eager} makes the files at once, as the C{qmail-queue} command must (its exit code
        tells which step failed); then begin() raises L{TempFailure} on trouble.
        C{uid} is the injecting user for the C{todo/} C{u} record (default this process's
        uid; the queue socket passes its client's), C{qp} the number for the Received line
        and the C{p} record (default one of this process's own; the queue socket passes its
        client's pid, which is qmail-queue's qp, as a forwarding qmail-local reports it).
        """
        serial = next(self._qps)
        now = self._seconds()
        writer = QueueWriter(self, serial if qp is None else qp, int(now), serial)
        if uid is not None:
            writer.uid = uid
        if eager:
            try:
                writer._ensureFile()
            except _Trouble as t:
                raise _failureFor(t.code)
        writer.write(receivedLine(writer.qp, how, now))
        return writer

    def _createMess(self, serial, now):
        """qmail-queue steps 2–3: returns C{(msgid, fd)}; raises L{_Trouble}.  C{serial} (unique
        in this process) names the C{pid/} file."""
        fd, pidPath = self._openPid(serial, now)
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

    def _openPid(self, serial, now):
        # A spare arrives by rename, which would replace a file of the same name: its pid/
        # name carries this process's own pid and an "s", a name no qmail-queue uses.
        spare = os.path.join(self.queueDir, "pid", "%d.%d.s%d" % (os.getpid(), now, serial))
        fd = self._takeSpare(spare)
        if fd is not None:
            self._recycled.add(fd)
            return fd, spare
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for seq in range(1, PID_SEQ_LIMIT + 1):
            path = os.path.join(self.queueDir, "pid", "%d.%d.%d" % (serial, now, seq))
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
        Queue C{writer} (with its C{todo} record bytes) for the next group flush; a
        Deferred fires with its id.

        The cheap steps (creating and writing files, linking) run here on the reactor
        thread; only the flushes run elsewhere (the flusher, else a worker thread).  A
        worker thread that made every small system call itself would trade the interpreter
        lock with the reactor thread at each one: measured, that hand-over (futex wake-ups
        and context switches) cost more CPU than the disk work it moved.

        While a flush runs, the files of a new commit wait (its bytes are in memory): the
        flush is writing the queue directories' blocks, and a lookup in a directory whose
        block is being written sleeps until the write is done, with the whole reactor.
        The commit could not join that flush anyway, so its files are made when it ends,
        in time for the next one.
        """
        d = Deferred()
        if self._flushing:
            self._unprepared.append((writer, todo, d))
        elif self._prepare(writer, todo, d):
            self._startFlush()
        return d

    def _prepare(self, writer, todo, d):
        """qmail-queue steps 2–5 for C{writer}, into the gathering group; C{False} (and
        C{d} failed) on trouble."""
        try:
            writer._prepare(todo)
        except _Trouble as t:
            d.errback(_failureFor(t.code))
            return False
        except Exception:
            d.errback(_failureFor(81))
            return False
        self._gathering.append((writer, d))
        return True

    def _startFlush(self):
        """
        One flush serves two groups: it makes the newest group's message and C{intd} files
        durable, and the C{todo/} links the group before it made after its own flush.  Under
        load every message still waits for two flushes, in qmail's order (files before the
        link), but no flush is spent on links alone while files wait: a commit waits for
        at most three flushes instead of four, and tells its observers a group at a time.
        """
        gathered, self._gathering = self._gathering, []
        linked, self._linked = self._linked, []
        self._flushing = True
        d = flushVia(self.flusher, self._blocking, self._flush, [w for w, _ in gathered],
                     bool(linked))
        d.addBoth(self._cbFlushed, gathered, linked)

    def _flush(self, writers, todoLinks):
        fds = [fd for w in writers for fd in (w._fd, w._intdFd)]
        dirs = [os.path.join(self.queueDir, "todo")] if todoLinks else []
        syncFiles(self.queueDir, fds, dirs)

    def _cbFlushed(self, result, gathered, linked):
        synced = not isinstance(result, Failure)
        if not synced:
            _log.failure("flushing queued messages failed", result)
        codes = self._linkTodo([w for w, _ in gathered], synced)
        for (writer, d), code in zip(gathered, codes):
            if code is None:
                self._linked.append((writer, d))
            else:
                d.errback(_failureFor(code))
        while self._unprepared:
            # A failure's errback may commit again at once: that commit is in the next list.
            unprepared, self._unprepared = self._unprepared, []
            for writer, todo, d in unprepared:
                self._prepare(writer, todo, d)
        self._flushing = False
        if linked:
            # Without the flush the links exist and qmail-send may take them: never remove
            # them now; the sender hears a temporary failure.
            if synced:
                self._announce([None])
            for writer, d in linked:
                if synced:
                    d.callback(writer.msgid)
                else:
                    d.errback(_failureFor(53))
            if synced:
                self._notifyAll([writer.msgid for writer, _ in linked])
        if (self._gathering or self._linked) and not self._flushing:
            self._startFlush()

    def _linkBatch(self, writers):
        """
        qmail-queue steps 4–6 for a group, blocking: make every message and C{intd} file
        durable, link C{intd} to C{todo}, and make C{todo/} durable (the step qmail leaves
        to the filesystem).  Returns a code (or C{None}) per writer.
        """
        try:
            self._flush(writers, False)
        except OSError:
            synced = False
        else:
            synced = True
        codes = self._linkTodo(writers, synced)
        if any(code is None for code in codes):
            try:
                self._flush([], True)
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

    def _announce(self, codes):
        """Wake a qmail-send in another process; one in this process hears L{_notifyAll}."""
        if not self._observers and any(code is None for code in codes):
            pullTrigger(self.queueDir)
