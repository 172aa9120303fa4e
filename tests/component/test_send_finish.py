"""
Preprocessing and finishing without failing system calls (L{qmailtx.sendpreprocess},
L{qmailtx.sendfinish}): stale files of a crashed preprocessing are still replaced or
removed, a recycled spare is cut to its new content's length, finishing removes only the
files a message is known to have (all of them when it is not known), and the spare pool
keeps room for the reactor thread, and the 36-hour cleanup spares messages on recycled inodes.
"""

import os
import time

import pytest

from qmailtx import sendfinish, sendpreprocess, sendqueue
from qmailtx.rewrite import LOCAL, REMOTE
from tests.component import test_send_spares as shared

world = shared.world
pool = shared.pool
rewriteLocal = shared.rewriteLocal


def writeStale(world, msgid, kinds):
    for kind in kinds:
        with open(sendqueue.path(world.queue.queueDir, kind, msgid), "wb") as f:
            f.write(b"Tstale@elsewhere\0" * 300)


@pytest.mark.parametrize("withSpares", [False, True])
def test_staleFilesReplacedOrRemoved(world, withSpares):
    """A crash after an earlier preprocessing wrote info/local/remote (todo/ still there):
    preprocessing again replaces info and the written channel, and removes the channel it
    no longer writes, with or without spare files."""
    q = world.queue.queueDir
    spares = pool(world) if withSpares else None
    if withSpares:
        for n in range(3):
            name = os.path.join(q, "info", "0", "90%d" % n)
            open(name, "wb").close()
            spares.give(name)
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    writeStale(world, msgid, ("info", LOCAL, REMOTE))
    ((_, message),) = sendpreprocess.preprocessBatch(q, [msgid], rewriteLocal, spares)
    assert message.known and list(message.channels) == [LOCAL]
    assert world.read("info", msgid) == b"Fa@example.org\0"
    assert world.read(LOCAL, msgid) == b"Tx@localhost\0"
    assert world.files(REMOTE) == [] and world.files("todo") == []


def test_recycledSpareCutToLength(world):
    """A spare larger than the new content keeps its inode and ends exactly at the new
    content (it is rewritten in place, then cut)."""
    q = world.queue.queueDir
    spares = pool(world)
    old = os.path.join(q, "info", "0", "900")
    with open(old, "wb") as f:
        f.write(b"x" * 5000)
    inode = os.stat(old).st_ino
    spares.give(old)
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    opened = []
    target = sendqueue.path(q, "info", msgid)
    sendpreprocess._writeNew(target, b"Fa@example.org\0", opened, spares)
    sendpreprocess.closeAll(opened)
    st = os.stat(target)
    assert (st.st_ino, st.st_size) == (inode, 15)
    assert world.read("info", msgid) == b"Fa@example.org\0"


def test_takeWithoutTruncateKeepsContent(world):
    """take(truncate=False) hands over the old bytes at offset 0; the default empties."""
    q = world.queue.queueDir
    spares = pool(world)
    for n in ("901", "902"):
        name = os.path.join(q, "info", "0", n)
        with open(name, "wb") as f:
            f.write(b"old content")
        spares.give(name)
    kept = os.path.join(q, "info", "0", "911")
    emptied = os.path.join(q, "info", "0", "912")
    os.close(spares.take(kept, truncate=False))
    os.close(spares.take(emptied))
    assert os.path.getsize(kept) == 11 and os.path.getsize(emptied) == 0


def test_finishKnownFilesOnly(world, monkeypatch):
    """A message preprocessed here: finishing touches only its own channel file, info and
    mess (no failing unlink of intd/bounce/remote), mess last."""
    q = world.queue.queueDir
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    ((_, message),) = sendpreprocess.preprocessBatch(q, [msgid], rewriteLocal)
    touched = []
    for name in ("unlink", "rename"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda p, *a, real=real: (touched.append(p), real(p, *a))[1])
    item = sendfinish.finishing(msgid, message.channels, bounce=False, intd=False)
    assert sendfinish.finishMessages(q, [item]) == []
    assert touched == [sendqueue.path(q, k, msgid) for k in (LOCAL, "info", "mess")]
    assert world.files("mess") == world.files("info") == world.files(LOCAL) == []


def test_finishUnknownRemovesEverything(world):
    """A bare id (a message loaded at start): every file that may exist goes, a leftover
    intd/ and bounce/ included."""
    q = world.queue.queueDir
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    sendpreprocess.preprocessBatch(q, [msgid], rewriteLocal)
    writeStale(world, msgid, (REMOTE, "intd", "bounce"))
    assert sendfinish.finishMessages(q, [msgid]) == []
    for kind in ("mess", "info", "intd", "bounce", LOCAL, REMOTE):
        assert world.files(kind) == []


def test_senderFinishesWithKnownFiles(world, monkeypatch):
    """Through the Sender: a delivered message preprocessed in this process leaves no file
    behind.  A small one needs no thread at all: its mess/ inode goes into the spare pool
    with its other files.  A big one (over SMALL_MESS) is queued for finishing with exactly
    its mess/ (no channel, intd or bounce left), which is unlinked."""
    items = []
    real = sendfinish.finishMessages
    monkeypatch.setattr(sendfinish, "finishMessages",
                        lambda q, batch, spares=None: (items.extend(batch),
                                                       real(q, batch, spares))[1])
    world.start()
    small = world.inject(b"a@example.org", [b"x@localhost"])
    world.sender.todoArrived([small])
    world.gathered()
    assert items == []
    spare = os.path.join(world.queue.queueDir, "spare")
    assert small in {os.stat(os.path.join(spare, n)).st_ino for n in os.listdir(spare)}
    big = world.inject(b"a@example.org", [b"x@localhost"],
                       body=b"Subject: big\n\n" + b"x" * (sendfinish.SMALL_MESS + 1) + b"\n")
    world.sender.todoArrived([big])
    world.gathered()
    assert items == [(big, (), False, False, False)]
    for kind in ("mess", "info", "todo", "intd", LOCAL):
        assert world.files(kind) == []


def test_reserveKeepsRoom(world):
    """give(reserve=N) refuses while fewer than N places are free; a plain give still fits."""
    q = world.queue.queueDir
    spares = pool(world, limit=3)
    names = [os.path.join(q, "info", "0", str(900 + n)) for n in range(3)]
    for name in names:
        open(name, "wb").close()
    assert spares.give(names[0], reserve=1) is True
    assert spares.give(names[1], reserve=1) is True
    assert spares.give(names[2], reserve=1) is False and os.path.exists(names[2])
    assert spares.give(names[2]) is True


def test_retireIntoPoolOrLeave(world):
    """retire() renames the channel files then info/ into the pool and never unlinks: with
    no room left it stops and says so, and finishMessages removes the rest."""
    q = world.queue.queueDir
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    sendpreprocess.preprocessBatch(q, [msgid], rewriteLocal)
    full = pool(world, limit=sendfinish.FINISH_RESERVE + 1)
    assert sendfinish.retire(q, msgid, (LOCAL,), full) is False
    assert world.files(LOCAL) == [] and world.files("info") == [msgid]
    assert sendfinish.finishMessages(q, [sendfinish.finishing(msgid, (LOCAL,), False, False)],
                                    full) == []
    assert world.files("info") == world.files("mess") == []

    second = world.inject(b"b@example.org", [b"y@localhost"])
    sendpreprocess.preprocessBatch(q, [second], rewriteLocal)
    roomy = pool(world)
    assert sendfinish.retire(q, second, (LOCAL,), roomy) is True
    assert world.files(LOCAL) == world.files("info") == [] and world.files("mess") == [second]
    assert sendfinish.retire(q, second, (LOCAL,), None) is False


def test_cleanupSparesAnInjectionOnARecycledInode(world):
    """The 36-hour cleanup removes mess/ and pid/ files a crashed injection left (with their
    intd/), never a message with todo/ or info/, and never a file that only looks old: a
    recycled spare brings its old atime, but the rename that claims it is recent (ctime)."""
    q = world.queue.queueDir
    now = time.time()
    crashed = world.inject(b"a@example.org", [b"x@localhost"])
    queued = world.inject(b"b@example.org", [b"y@localhost"])
    writing = world.inject(b"c@example.org", [b"z@localhost"])
    for msgid in (crashed, writing):
        os.unlink(sendqueue.path(q, "todo", msgid))
    oldPid = os.path.join(q, "pid", "1.1.1")
    recycledPid = os.path.join(q, "pid", "2.2.s3")
    for name in (oldPid, recycledPid):
        with open(name, "wb"):
            pass
    old = now - sendfinish.CLEANUP_AGE - 60
    for name in (sendqueue.path(q, "mess", writing), recycledPid):
        os.utime(name, (old, old))
    assert sendfinish.cleanupScan(q, now) == 0
    later = now + sendfinish.CLEANUP_AGE + 60
    assert sendfinish.cleanupScan(q, later) == 4
    assert world.files("mess") == [queued] and world.files("intd") == [queued]
    assert os.listdir(os.path.join(q, "pid")) == []
