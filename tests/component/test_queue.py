"""qmailtx.queue.Queue on a real temp directory: files, order, failures, group commit."""

import errno
import os

import pytest
from twisted.internet import defer, task

from qmailtx import queue as queuemod
from qmailtx import queuefiles
from qmailtx.envelope import parseRecords
from qmailtx.queue import Queue
from qmailtx.queuelayout import createLayout
from qmailtx.queuewriter import WRITE_BUFFER
from qmailtx.results import PermFailure, TempFailure

NOW = 1732217160


def syncRun(f, *args):
    return defer.maybeDeferred(f, *args)


@pytest.fixture
def root(tmp_path):
    createLayout(str(tmp_path / "queue"))
    return str(tmp_path)


def makeQueue(root, runBlocking=syncRun):
    clock = task.Clock()
    clock.advance(NOW)
    return Queue(root, reactor=clock, runBlocking=runBlocking)


def read(root, *parts):
    with open(os.path.join(root, "queue", *parts), "rb") as f:
        return f.read()


def listing(root, name):
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, "queue", name)):
        out += files
    return sorted(out)


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def test_commitSyncFiles(root):
    """A committed message is mess/<id%23>/<id> (Received line + bytes) and todo/<id> with u/p/F/T records; pid/ is empty."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    w.write(b"Subject: hi\n\nbody\n")
    msgid = w.commitSync(b"a@x", [b"b@y", b"c@z"])
    assert msgid == w.msgid
    mess = os.path.join(root, "queue", "mess", str(msgid % 23), str(msgid))
    assert os.stat(mess).st_ino == msgid
    assert read(root, "mess", str(msgid % 23), str(msgid)) == (
        b"Received: (qmail %d invoked from network); 21 Nov 2024 19:26:00 -0000\n"
        b"Subject: hi\n\nbody\n" % w.qp)
    assert read(root, "todo", str(msgid)) == b"u%d\0p%d\0Fa@x\0Tb@y\0Tc@z\0" % (os.getuid(), w.qp)
    assert listing(root, "pid") == []
    assert listing(root, "todo") == [str(msgid)]


def test_qpUniqueIncreasing(root):
    """Each begin() gets a larger qp, and distinct messages get distinct ids."""
    q = makeQueue(root)
    writers = [q.begin(b"by uid 5", eager=True) for _ in range(3)]
    assert [w.qp for w in writers] == sorted(set(w.qp for w in writers))
    assert len({w.msgid for w in writers}) == 3
    for w in writers:
        w.abort()


def test_givenQpRepeatedInOneSecond(root):
    """Two messages given the same qp (two queue-socket clients that had the same pid) in
    the same second still get their own pid/ files and messages: files are named by the
    queue's own serial, the qp only shows in the Received line and the p record."""
    q = makeQueue(root)
    ids = []
    for body in (b"one\n", b"two\n"):
        w = q.begin(b"by uid 1000", eager=True, qp=4242)
        w.write(body)
        ids.append(w.commitSync(b"a@b", [b"c@d"]))
    assert ids[0] != ids[1]
    for msgid, body in zip(ids, (b"one\n", b"two\n")):
        mess = read(root, "mess", str(msgid % 23), str(msgid))
        assert mess.startswith(b"Received: (qmail 4242 invoked by uid 1000); ")
        assert mess.endswith(body)
        assert read(root, "todo", str(msgid)).startswith(b"u%d\0p4242\0" % os.getuid())


def test_commitDeferredAndObserverAndTrigger(root):
    """commit() fires with the id after todo is linked; observers get the id, and with one
    in this process nothing is written to lock/trigger (qmail-send would only list todo/
    again); without one, one byte reaches lock/trigger for a qmail-send elsewhere."""
    trigger = os.open(os.path.join(root, "queue", "lock", "trigger"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        q = makeQueue(root)
        seen = []
        q.addObserver(seen.append)
        w = q.begin(b"for bounce")
        w.write(b"x\n")
        msgid = result(w.commit(b"", [b"r@y"]))
        assert msgid == w.msgid and seen == [[msgid]]
        assert os.path.exists(os.path.join(root, "queue", "todo", str(msgid)))
        assert os.read(trigger, 10) == b""
        alone = makeQueue(root)
        w = alone.begin(b"for bounce")
        w.write(b"y\n")
        result(w.commit(b"", [b"r@y"]))
        assert os.read(trigger, 10) == b"\0"
    finally:
        os.close(trigger)


def test_triggerWithoutReader(root):
    """With nobody reading the trigger FIFO, commit still succeeds (the wake-up is best effort)."""
    q = makeQueue(root)
    w = q.begin(b"by alias")
    assert w.commitSync(b"a", [b"b"]) == w.msgid


def test_tooLong(root):
    """An address over 1002 bytes fails permanently with qmail's text and leaves no files."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    w.write(b"x\n")
    f = result(w.commit(b"a@x", [b"b" * 1003]))
    assert f.value == PermFailure(b"envelope address too long for qq (#5.1.3)")
    assert listing(root, "mess") == [] and listing(root, "intd") == []


def test_abort(root):
    """abort() removes the message file: nothing is left of it."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    w.write(b"partial")
    w.abort()
    w.write(b"ignored")
    assert listing(root, "mess") == [] and listing(root, "pid") == []


def test_diskFull(root, monkeypatch):
    """A write error (disk full) is 'qq write error or disk full' and removes mess and intd."""
    q = makeQueue(root)
    w = q.begin(b"from network")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(queuemod.os, "write", full)
    w.write(b"y" * 100)
    f = result(w.commit(b"a", [b"b"]))
    monkeypatch.undo()
    assert f.value == TempFailure(b"qq write error or disk full (#4.3.0)")
    assert listing(root, "mess") == [] and listing(root, "intd") == [] and listing(root, "todo") == []


def test_queueMissing(tmp_path):
    """Without a queue directory an eager begin() raises qmail's 'trouble creating files'
    failure, and a lazy one's commit fails with the same text."""
    q = makeQueue(str(tmp_path))
    with pytest.raises(TempFailure) as e:
        q.begin(b"from network", eager=True)
    assert e.value.text == b"qq trouble creating files in queue (#4.3.0)"
    w = q.begin(b"from network")
    w.write(b"x\n")
    with pytest.raises(TempFailure) as e:
        w.commitSync(b"a@b", [b"c@d"])
    assert e.value.text == b"qq trouble creating files in queue (#4.3.0)"


def test_pidSeqExhausted(root):
    """When pid/<qp>.<time>.1 to .9 all exist, begin() fails temporarily (qmail's exit 63)."""
    q = makeQueue(root)
    qp = os.getpid()
    for seq in range(1, 10):
        open(os.path.join(root, "queue", "pid", "%d.%d.%d" % (qp, NOW, seq)), "w").close()
    with pytest.raises(TempFailure):
        q.begin(b"from network", eager=True)
    w = q.begin(b"from network", eager=True)
    assert w.qp == qp + 1
    w.abort()


def test_pidSeqRetry(root):
    """A leftover pid file with seq 1 makes begin() use seq 2 and still succeed."""
    q = makeQueue(root)
    stale = os.path.join(root, "queue", "pid", "%d.%d.1" % (os.getpid(), NOW))
    open(stale, "w").close()
    w = q.begin(b"from network")
    assert w.commitSync(b"a", [b"b"]) == w.msgid
    assert listing(root, "pid") == ["%d.%d.1" % (os.getpid(), NOW)]


def test_staleIntdReplaced(root):
    """A stale intd/<id> from a dead message with a reused inode number does not block the new one."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    with open(os.path.join(root, "queue", "intd", str(w.msgid)), "wb") as f:
        f.write(b"garbage")
    w.commitSync(b"a", [b"b"])
    assert read(root, "todo", str(w.msgid)).endswith(b"Fa\0Tb\0")


def test_todoLinkFails(root, monkeypatch):
    """If linking todo fails, the caller gets a temporary failure and mess and intd are removed."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    realLink = os.link

    def link(src, dst):
        if "/todo/" in dst:
            raise OSError(errno.EIO, "io")
        return realLink(src, dst)

    monkeypatch.setattr(queuemod.os, "link", link)
    with pytest.raises(TempFailure) as e:
        w.commitSync(b"a", [b"b"])
    assert e.value.text == b"qq trouble creating files in queue (#4.3.0)"
    assert listing(root, "mess") == [] and listing(root, "intd") == []


def test_todoDirSyncFails(root, monkeypatch):
    """If the todo directory cannot be fsync'd the message stays queued (never removed under qmail-send) but the caller hears 'temporary'."""
    q = makeQueue(root)
    w = q.begin(b"from network")

    def broken(path):
        raise OSError(errno.EIO, "io")

    monkeypatch.setattr(queuefiles, "_fsyncDir", broken)
    with pytest.raises(TempFailure):
        w.commitSync(b"a", [b"b"])
    assert listing(root, "todo") == [str(w.msgid)]
    assert len(listing(root, "mess")) == 1


def test_streamingBounded(root, monkeypatch):
    """A 2 MiB message written in 1 KiB pieces is stored intact while at most WRITE_BUFFER bytes wait in memory."""
    q = makeQueue(root)
    w = q.begin(b"from network")
    chunk = bytes(range(256)) * 4
    peak = 0
    for _ in range(2048):
        w.write(chunk)
        peak = max(peak, len(w._buffer))
    assert peak < WRITE_BUFFER
    msgid = w.commitSync(b"a", [b"b"])
    data = read(root, "mess", str(msgid % 23), str(msgid))
    assert data.split(b"\n", 1)[1] == chunk * 2048


class ManualFlushes:
    """A runBlocking that holds each flush until the test runs it."""

    def __init__(self):
        self.pending = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.pending.append((f, args, d))
        return d

    def runOne(self, fail=False):
        f, args, d = self.pending.pop(0)
        if fail:
            d.errback(OSError(errno.EIO, "io"))
        else:
            d.callback(f(*args))


def recordFlushes(q):
    flushes = []
    real = q._flush
    q._flush = lambda writers, todo: flushes.append((len(writers), todo)) or real(writers, todo)
    return flushes


def commitSome(q, n):
    ds = []
    for i in range(n):
        w = q.begin(b"from network")
        w.write(b"m%d\n" % i)
        ds.append(w.commit(b"a", [b"b%d" % i]))
    return ds


def test_groupCommit(root):
    """Commits that arrive during a flush gather for the next one, and each flush serves two
    groups: the newest group's files and the todo/ links of the group before.  No commit
    fires before a flush that began after its todo/ link."""
    flushes_ = ManualFlushes()
    q = makeQueue(root, flushes_)
    flushes = recordFlushes(q)
    seen = []
    q.addObserver(seen.append)
    ds = commitSome(q, 5)
    fired = []
    for i, d in enumerate(ds):
        d.addCallback(lambda msgid, i=i: fired.append(i) or msgid)
    # The first commit's flush is under way alone; the other four gather behind it.
    assert len(flushes_.pending) == 1 and listing(root, "todo") == []
    flushes_.runOne()
    assert listing(root, "todo") != [] and fired == []
    flushes_.runOne()
    assert fired == [0] and seen == [[ds[0].result]]
    assert len(listing(root, "todo")) == 5
    flushes_.runOne()
    assert fired == [0, 1, 2, 3, 4] and not flushes_.pending
    assert flushes == [(1, False), (4, True), (0, True)]
    assert seen == [[ds[0].result], [d.result for d in ds[1:]]]


def test_commitDuringAFlushMakesItsFilesAfterIt(root):
    """A commit that arrives while a flush runs makes no file until that flush ends (the
    flush is writing the queue directories, where a lookup would sleep with the reactor);
    then its files are made and flushed next, before its todo/ link, as qmail orders."""
    flushes_ = ManualFlushes()
    q = makeQueue(root, flushes_)
    flushes = recordFlushes(q)
    (first,) = commitSome(q, 1)
    assert len(listing(root, "mess")) == 1
    (second,) = commitSome(q, 1)
    assert len(listing(root, "mess")) == 1 and len(listing(root, "intd")) == 1
    flushes_.runOne()
    assert len(listing(root, "mess")) == 2 and len(listing(root, "intd")) == 2
    assert len(listing(root, "todo")) == 1
    while flushes_.pending:
        flushes_.runOne()
    assert isinstance(first.result, int) and isinstance(second.result, int)
    assert flushes == [(1, False), (1, True), (0, True)]
    assert sorted(listing(root, "todo")) == sorted([str(first.result), str(second.result)])


def test_aFailedPrepareThatCommitsAgainIsNotStranded(root, monkeypatch):
    """A commit made during a flush whose files cannot be made fails when the flush ends;
    if its caller commits again at once, that commit is not left behind."""
    flushes_ = ManualFlushes()
    q = makeQueue(root, flushes_)
    commitSome(q, 1)
    flushes_.runOne()
    # Now the flush of that commit's todo/ link alone is under way.
    broken = q.begin(b"from network")
    broken.write(b"x\n")

    def cannot(todo):
        raise queuemod._Trouble(53)

    monkeypatch.setattr(broken, "_prepare", cannot)
    retried = []

    def again(failure):
        retried.append(commitSome(q, 1)[0])

    broken.commit(b"a", [b"b"]).addErrback(again)
    while flushes_.pending:
        flushes_.runOne()
    assert len(retried) == 1 and isinstance(retried[0].result, int)


def test_groupCommitFlushFails(root):
    """A flush that fails fails both of its groups temporarily: the newest group's files are
    removed; the group whose todo/ links already exist keeps them (qmail-send may have
    taken them), unannounced, for qmail-send's next scan."""
    flushes_ = ManualFlushes()
    q = makeQueue(root, flushes_)
    seen = []
    q.addObserver(seen.append)
    first = commitSome(q, 1)
    rest = commitSome(q, 2)
    flushes_.runOne()
    (linked,) = listing(root, "todo")
    flushes_.runOne(fail=True)
    for d in first + rest:
        failures = []
        d.addErrback(failures.append)
        assert failures[0].check(TempFailure)
    assert listing(root, "todo") == [linked] and listing(root, "intd") == [linked]
    assert [n for n in listing(root, "mess")] == [linked]
    assert seen == [] and not flushes_.pending


def test_recordsReadable(root):
    """A todo written here reads back with the shared record parser as qmail-send expects."""
    q = makeQueue(root)
    w = q.begin(b"by uid 7")
    msgid = w.commitSync(b"s@x", [b"t@y"])
    assert parseRecords(read(root, "todo", str(msgid))) == [
        (b"u", str(os.getuid()).encode()), (b"p", str(w.qp).encode()), (b"F", b"s@x"), (b"T", b"t@y")]


def test_recycledInodesFromSpares(root):
    """With the queue manager's spare pool, a message's pid/mess and intd files are recycled
    inodes (no allocation), emptied first; the message and todo are exactly as without."""
    from qmailtx.spares import SparePool

    q = makeQueue(root)
    pool = SparePool(q.queueDir)
    pool.load()
    inodes = set()
    for i in range(2):
        name = os.path.join(root, "queue", "todo", "old%d" % i)
        with open(name, "wb") as f:
            f.write(b"stale content that must not survive " * 10)
        inodes.add(os.stat(name).st_ino)
        assert pool.give(name)
    q.spares = pool
    w = q.begin(b"from network")
    w.write(b"Subject: recycled\n\nbody\n")
    msgid = w.commitSync(b"a@b", [b"c@d"])
    assert len(pool) == 0
    mess = os.path.join(root, "queue", "mess", str(msgid % 23), str(msgid))
    assert msgid in inodes and os.stat(mess).st_ino == msgid
    with open(mess, "rb") as f:
        data = f.read()
    assert data.startswith(b"Received: (qmail ") and data.endswith(b"\nSubject: recycled\n\nbody\n")
    with open(os.path.join(root, "queue", "todo", str(msgid)), "rb") as f:
        todo = f.read()
    assert parseRecords(todo)[2:] == [(b"F", b"a@b"), (b"T", b"c@d")]
    assert todo.endswith(b"\0Fa@b\0Tc@d\0"), "stale bytes after the envelope"
    assert os.stat(os.path.join(root, "queue", "todo", str(msgid))).st_ino in inodes
    assert os.listdir(os.path.join(root, "queue", "pid")) == []
    assert os.stat(mess).st_mode & 0o777 == 0o644
