"""
qmail-send's spare queue files (L{qmailtx.spares.SparePool}) on a real queue directory:
finished C{info/}, channel and C{todo/} files are renamed into C{spare/} and come back as the
next message's files, emptied, mode 0600, without a new inode; C{mess/} never goes there;
and a crash half-way through preprocessing still ends in the right content.
"""

import os
import stat

import pytest

from qmailtx import sendfinish, sendpreprocess, sendqueue, spares as sparemod
from qmailtx.rewrite import LOCAL
from tests.component.test_send import World


@pytest.fixture
def world(qmailRoot):
    w = World(qmailRoot)
    yield w
    if w.sender is not None and w.sender.running:
        w.stop()


def rewriteLocal(address):
    return LOCAL, address


def pool(world, limit=sparemod.SPARE_LIMIT):
    spares = sparemod.SparePool(world.queue.queueDir, limit)
    spares.load()
    return spares


def spareInodes(spares):
    return {os.stat(os.path.join(spares.directory, n)).st_ino
            for n in os.listdir(spares.directory)}


def test_giveAndTakeReuseTheInode(world, tmp_path):
    """A given file leaves its name for spare/; take() puts that same inode, empty and 0600,
    under the new name."""
    spares = pool(world)
    name = os.path.join(world.queue.queueDir, "info", "0", "7")
    with open(name, "wb") as f:
        f.write(b"old content")
    os.chmod(name, 0o644)
    inode = os.stat(name).st_ino
    assert spares.give(name) is True
    assert not os.path.exists(name) and len(spares) == 1
    target = os.path.join(world.queue.queueDir, "local", "0", "8")
    fd = spares.take(target)
    try:
        st = os.fstat(fd)
        assert (st.st_ino, st.st_size, stat.S_IMODE(st.st_mode)) == (inode, 0, 0o600)
    finally:
        os.close(fd)
    assert len(spares) == 0 and os.listdir(spares.directory) == []
    assert spares.take(os.path.join(world.queue.queueDir, "local", "0", "9")) is None


def test_giveBeyondTheLimitOrMissing(world):
    """A full pool refuses (the caller unlinks); a missing file counts as removed, keeps nothing."""
    spares = pool(world, limit=1)
    first, second = (os.path.join(world.queue.queueDir, "info", "0", n) for n in ("1", "2"))
    for name in (first, second):
        open(name, "wb").close()
    assert spares.give(first) is True
    assert spares.give(second) is False and os.path.exists(second)
    assert spares.give(os.path.join(world.queue.queueDir, "info", "0", "3")) is False
    empty = pool(world, limit=5)
    assert empty.give(os.path.join(world.queue.queueDir, "info", "0", "3")) is True
    assert len(empty) == 1


def test_loadAdoptsAndTrims(world):
    """On start the pool adopts what spare/ holds, unlinks the excess, and names new spares
    after the highest one."""
    directory = os.path.join(world.queue.queueDir, sparemod.SPARE)
    os.mkdir(directory)
    for n in ("3", "10", "4"):
        open(os.path.join(directory, n), "wb").close()
    spares = pool(world, limit=2)
    assert len(spares) == 2 and len(os.listdir(directory)) == 2
    name = os.path.join(world.queue.queueDir, "info", "0", "5")
    open(name, "wb").close()
    spares.limit = 3
    assert spares.give(name) and "11" in os.listdir(directory)


def test_preprocessAndFinishCycleThroughSpares(world):
    """A finished message's info/local become the next message's files (same inodes, right
    content, 0600); its todo/ goes to the pool too; mess/ is unlinked, never kept."""
    world.control("concurrencylocal", b"0\n")
    q = world.queue.queueDir
    spares = pool(world)
    first = world.inject(b"a@example.org", [b"x@localhost"])
    todoInode = os.stat(sendqueue.path(q, "todo", first)).st_ino
    ((_, message),) = sendpreprocess.preprocessBatch(q, [first], rewriteLocal, spares)
    assert message.sender == b"a@example.org"
    assert spareInodes(spares) == {todoInode}
    old = {kind: os.stat(sendqueue.path(q, kind, first)).st_ino for kind in ("info", LOCAL)}
    messInode = os.stat(sendqueue.path(q, "mess", first)).st_ino
    assert sendfinish.finishMessages(q, [first], spares) == []
    assert spareInodes(spares) == {todoInode, *old.values()}
    assert messInode not in spareInodes(spares)
    assert world.files("mess") == []

    second = world.inject(b"longer-sender@example.org", [b"y@localhost", b"z@localhost"])
    ((_, message),) = sendpreprocess.preprocessBatch(q, [second], rewriteLocal, spares)
    infoSt = os.stat(sendqueue.path(q, "info", second))
    localSt = os.stat(sendqueue.path(q, LOCAL, second))
    assert {infoSt.st_ino, localSt.st_ino} <= {todoInode, *old.values()}
    assert stat.S_IMODE(infoSt.st_mode) == stat.S_IMODE(localSt.st_mode) == 0o600
    assert world.read("info", second) == b"Flonger-sender@example.org\0"
    assert world.read(LOCAL, second) == b"Ty@localhost\0Tz@localhost\0"
    assert [r.address for r in message.channels[LOCAL][1]] == [b"y@localhost", b"z@localhost"]
    assert world.files("todo") == [] and world.files("intd") == []


def test_crashAfterTakingASpareIsRedone(world):
    """A spare renamed into info/ whose content was never written (crash before the sync)
    leaves todo/ in place, so preprocessing again writes the right files."""
    world.control("concurrencylocal", b"0\n")
    q = world.queue.queueDir
    spares = pool(world)
    msgid = world.inject(b"a@example.org", [b"x@localhost"])
    garbage = os.path.join(q, "info", "0", "99")
    with open(garbage, "wb") as f:
        f.write(b"Tstale@elsewhere\0" * 10)
    spares.give(garbage)
    os.close(spares.take(sendqueue.path(q, "info", msgid)))
    with open(sendqueue.path(q, "info", msgid), "wb") as f:
        f.write(b"garbage that is longer than the real thing")
    assert world.files("todo") == [msgid]
    ((_, message),) = sendpreprocess.preprocessBatch(q, [msgid], rewriteLocal, spares)
    assert world.read("info", msgid) == b"Fa@example.org\0"
    assert world.read(LOCAL, msgid) == b"Tx@localhost\0"
    assert world.files("todo") == []


def test_senderUsesSpares(world):
    """The running sender keeps finished files in spare/ and delivers from reused ones."""
    sender = world.start()
    for n in range(3):
        world.inject(b"joe@example.org", [b"a%d@localhost" % n])
    assert len(world.local.calls) == 3
    assert world.files("mess") == [] and world.files("info") == []
    assert len(sender.spares) >= 2
    assert len(os.listdir(sender.spares.directory)) == len(sender.spares)


def test_handOutKeepsTheOwnShareAndGivesUpOwnership(world):
    """handOut() gives at most C{most} names beyond C{keep}; they leave the pool's list and
    count, their files stay in spare/, and another pool that adopts them takes their inodes."""
    spares = pool(world)
    for i in range(10):
        name = os.path.join(world.queue.queueDir, "info", "0", str(100 + i))
        open(name, "wb").close()
        assert spares.give(name) is True
    inodes = spareInodes(spares)
    assert spares.handOut(8, keep=10) == spares.handOut(0) == []
    handed = spares.handOut(8, keep=4)
    assert len(handed) == 6 and len(spares) == 4 and spares._count == 4
    assert len(os.listdir(spares.directory)) == 10
    other = sparemod.SparePool(world.queue.queueDir)
    other.adopt(handed + ["not-a-spare"])
    assert len(other) == 6
    taken = set()
    for i in range(6):
        fd = other.take(os.path.join(world.queue.queueDir, "intd", str(200 + i)))
        taken.add(os.fstat(fd).st_ino)
        os.close(fd)
    assert other.take(os.path.join(world.queue.queueDir, "intd", "300")) is None
    assert taken <= inodes and len(taken) == 6
    assert sorted(os.listdir(spares.directory)) == sorted(spares._names)
