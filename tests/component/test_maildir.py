"""
Maildir writing and reading on real temp directories (spec/local.md §7, spec/pop3.md §3).
"""

import io
import os
import stat
import time

import pytest

from qmailtx import maildir, maildirscan
from qmailtx.results import TempFailure


@pytest.fixture
def md(tmp_path):
    path = tmp_path / "Maildir"
    maildir.maildirmake(str(path))
    return path


def age(path, seconds):
    """Set a file's times C{seconds} into the past."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_maildirmakeModes(tmp_path):
    """maildirmake creates dir, tmp, new, cur all mode 0700 and refuses an existing dir."""
    path = tmp_path / "M"
    maildir.maildirmake(str(path))
    for p in (path, path / "tmp", path / "new", path / "cur"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    with pytest.raises(FileExistsError):
        maildir.maildirmake(str(path))


def test_deliverWritesPrefixAndMessage(md):
    """deliver() leaves exactly prefix+message in new/ under a name without ':' or leading '.'; tmp/ is empty."""
    name = maildir.deliver(str(md), b"Return-Path: <a@b>\n", io.BytesIO(b"Subject: x\n\nbody\n"))
    assert os.listdir(md / "new") == [name.decode()]
    assert b":" not in name and not name.startswith(b".")
    assert (md / "new" / name.decode()).read_bytes() == b"Return-Path: <a@b>\nSubject: x\n\nbody\n"
    assert os.listdir(md / "tmp") == []


def test_deliverNamesUniqueInOneProcess(md):
    """Many deliveries within one process and one second get distinct names."""
    names = {maildir.deliver(str(md), b"", io.BytesIO(b"x\n")) for _ in range(200)}
    assert len(names) == 200
    assert len(os.listdir(md / "new")) == 200


def test_uniqueNameShape():
    """Unique names follow <sec>.M<usec>P<pid>Q<n>.<host> with / and : in the host escaped."""
    names = maildir.UniqueNames(hostname=b"a/b:c", clock=lambda: 1700000000.25, pid=42)
    assert names.next() == b"1700000000.M250000P42Q1.a\\057b\\072c"
    assert names.next() == b"1700000000.M250000P42Q2.a\\057b\\072c"


def test_deliverMissingMaildir(tmp_path):
    """A maildir that does not exist fails temporarily with qmail-local's chdir text."""
    with pytest.raises(TempFailure) as e:
        maildir.deliver(str(tmp_path / "nope"), b"", io.BytesIO(b"x"))
    assert e.value.text == b"Unable to chdir to maildir. (#4.2.1)"


def test_deliverMissingTmp(md):
    """A maildir without tmp/ fails temporarily with the generic maildir text."""
    os.rmdir(md / "tmp")
    with pytest.raises(TempFailure) as e:
        maildir.deliver(str(md), b"", io.BytesIO(b"x"))
    assert e.value.text == b"Temporary error on maildir delivery. (#4.3.0)"
    assert os.listdir(md / "new") == []


def test_deliverUnreadableMessage(md):
    """A message that cannot be read fails temporarily and leaves nothing in tmp/ or new/."""
    class Broken:
        def read(self, n):
            raise OSError(5, "EIO")
    with pytest.raises(TempFailure) as e:
        maildir.deliver(str(md), b"x", Broken())
    assert e.value.text == b"Unable to read message. (#4.3.0)"
    assert os.listdir(md / "tmp") == [] and os.listdir(md / "new") == []


def put(md, sub, name, data, ago=10):
    p = md / sub / name
    p.write_bytes(data)
    age(p, ago)
    return p


def test_scanOrderAndVisibility(md):
    """scan() lists new/ and cur/ by mtime, skips dot files and files from the current second."""
    put(md, "cur", "b:2,S", b"bb", ago=30)
    put(md, "new", "a", b"a", ago=20)
    put(md, "new", ".hidden", b"x", ago=50)
    (md / "new" / "fresh").write_bytes(b"now")
    assert maildirscan.Maildir(str(md)).scan() == [(b"cur/b:2,S", 2), (b"new/a", 1)]


def test_scanCacheSeesChanges(md):
    """A cached listing is reused only while the directory is unchanged: new and removed files show up."""
    cache = maildirscan.ScanCache()
    put(md, "new", "a", b"a", ago=20)
    age(md / "new", 10)
    m = maildirscan.Maildir(str(md), cache=cache)
    assert m.scan() == [(b"new/a", 1)]
    assert m.scan() == [(b"new/a", 1)]
    put(md, "new", "b", b"bb", ago=5)
    os.unlink(md / "new" / "a")
    assert m.scan() == [(b"new/b", 2)]


def test_updateDeletesAndMoves(md):
    """update() unlinks deleted names and renames kept new/ files to cur/<x>:2, (cache stays right)."""
    cache = maildirscan.ScanCache()
    put(md, "new", "a", b"a", ago=30)
    put(md, "new", "b", b"b", ago=20)
    put(md, "cur", "c:2,S", b"c", ago=10)
    m = maildirscan.Maildir(str(md), cache=cache)
    assert [n for n, _ in m.scan()] == [b"new/a", b"new/b", b"cur/c:2,S"]
    assert m.update([b"new/a"], [b"new/b", b"cur/c:2,S"]) == 0
    assert sorted(os.listdir(md / "cur")) == ["b:2,", "c:2,S"]
    assert os.listdir(md / "new") == []
    assert [n for n, _ in m.scan()] == [b"cur/b:2,", b"cur/c:2,S"]
    assert [n for n, _ in maildirscan.Maildir(str(md)).scan()] == [b"cur/b:2,", b"cur/c:2,S"]


def test_uid():
    """The UIDL is the base name up to the first ':' so it survives new→cur."""
    assert maildirscan.uidOf(b"new/123.x") == maildirscan.uidOf(b"cur/123.x:2,S") == b"123.x"


def test_cleanTmp(md):
    """cleanTmp removes tmp/ files older than 36 h (atime) but keeps young and dot files."""
    put(md, "tmp", "old", b"x", ago=37 * 3600)
    put(md, "tmp", ".old", b"x", ago=37 * 3600)
    put(md, "tmp", "young", b"x", ago=3600)
    maildirscan.Maildir(str(md)).cleanTmp()
    assert sorted(os.listdir(md / "tmp")) == [".old", "young"]


def test_checkMissing(tmp_path):
    """check() raises NoMaildir for a missing maildir; scan() raises ScanError without new/."""
    with pytest.raises(maildirscan.NoMaildir):
        maildirscan.Maildir(str(tmp_path / "x")).check()
    maildir.maildirmake(str(tmp_path / "y"))
    os.rmdir(tmp_path / "y" / "new")
    with pytest.raises(maildirscan.ScanError):
        maildirscan.Maildir(str(tmp_path / "y")).scan()


def test_openRefusesOtherNames(md):
    """open() only opens new/x or cur/x names, never paths leaving the maildir."""
    for bad in (b"tmp/x", b"new/../../etc/passwd", b"x"):
        with pytest.raises(OSError):
            maildirscan.Maildir(str(md)).open(bad)


def clockOf(times):
    """A clock returning C{times} one after the other."""
    times = iter(times)
    return lambda: next(times)


def reference(md):
    """qmail-pop3d's order computed the slow way: every visible file stat'ed, by (mtime, name)."""
    found = []
    for sub in (b"new", b"cur"):
        for name in os.listdir(os.path.join(bytes(md), sub)):
            st = os.stat(os.path.join(bytes(md), sub, name))
            found.append((st.st_mtime_ns, sub + b"/" + name, st.st_size))
    return [(name, size) for _, name, size in sorted(found)]


def test_deliverStampsNameSizeAndTime(md):
    """deliver() names the file <unique>,S=<size> with six-digit microseconds, and its mtime is the name's time."""
    names = maildir.UniqueNames(hostname=b"h", clock=lambda: 1700000000.0000421, pid=7)
    name = maildir.deliver(str(md), b"X: y\n", io.BytesIO(b"body\n"), names=names)
    assert name == b"1700000000.M000042P7Q1.h,S=10"
    st = os.stat(md / "new" / name.decode())
    assert (st.st_mtime_ns, st.st_size) == (1700000000000042000, 10)
    assert maildir.deliveredStat(name) == (1700000000000042000, 10)
    assert maildir.deliveredStat(name + b":2,S") == (1700000000000042000, 10)


def test_deliveredStatOnlyForDeliverNames():
    """Names deliver() does not write (other forms, Dovecot's extra fields, short fields) give None."""
    for other in (b"1700000000.M42P7Q1.h,S=10", b"170000000.M000042P7Q1.h,S=10",
                  b"1700000000.M000042P7Q1.h", b"1700000000.M000042P7Q1.h,S=10,W=11",
                  b"1700000000.M000042P7.h,S=10", b"1700000000.12345.h", b"1700000000.M000042P7Q1.h,S=:2,"):
        assert maildir.deliveredStat(other) is None, other


def test_scanOfDeliveredNamesNeedsOneStat(md, monkeypatch):
    """Scanning messages deliver() wrote stats one of them (the check), not one per message."""
    times = [1700000000 + i / 7 for i in range(200)]
    names = maildir.UniqueNames(hostname=b"h", clock=clockOf(times), pid=1)
    for i in range(200):
        maildir.deliver(str(md), b"", io.BytesIO(b"x" * i), names=names)
    statted = []
    realStat = os.stat

    def countingStat(path, *a, **kw):
        if b",S=" in os.fsencode(path):
            statted.append(path)
        return realStat(path, *a, **kw)
    monkeypatch.setattr(os, "stat", countingStat)
    listing = maildirscan.Maildir(str(md), cache=maildirscan.ScanCache()).scan()
    monkeypatch.undo()
    assert len(statted) == 1
    assert listing == reference(md)


def test_nameOrderIsMtimeOrder(md):
    """
    For deliver()'s names, the listing read from names equals the stat'ed (mtime, name) order,
    with ties in one microsecond, microseconds of different digit counts, both new/ and cur/,
    and foreign names (stat'ed) mixed in.
    """
    base = 1700000000
    times = [base + 0.000005, base + 0.000012, base + 0.5, base + 0.5, base + 0.000099,
             base + 1.000001, base + 1.0, base + 2.25, base + 2.25, base + 0.9999]
    names = maildir.UniqueNames(hostname=b"h\xff", clock=clockOf(times), pid=3)
    delivered = [maildir.deliver(str(md), b"", io.BytesIO(b"y" * i), names=names)
                 for i in range(len(times))]
    for name in delivered[::3]:
        os.rename(os.path.join(bytes(md), b"new", name), os.path.join(bytes(md), b"cur", name + b":2,S"))
    for i, when in enumerate((base + 0.5, base + 0.0000051, base + 3, base)):
        p = md / "cur" / f"{base}.M{i}P9.other"
        p.write_bytes(b"z" * i)
        os.utime(p, ns=(int(when * 10**9), int(when * 10**9)))
    listing = maildirscan.Maildir(str(md), cache=maildirscan.ScanCache()).scan()
    assert listing == reference(md)
    assert len(listing) == len(times) + 4


def test_scanNoticesNamesThatLie(md):
    """If the checked file's mtime is not its name's (a restore that reset mtimes), every file is stat'ed."""
    names = maildir.UniqueNames(hostname=b"h", clock=clockOf([1700000000 + i for i in range(20)]),
                                pid=1)
    delivered = [maildir.deliver(str(md), b"", io.BytesIO(b"m"), names=names) for _ in range(20)]
    for i, name in enumerate(delivered):
        when = (1700001000 - i) * 10**9
        os.utime(md / "new" / name.decode(), ns=(when, when))
    listing = maildirscan.Maildir(str(md), cache=maildirscan.ScanCache()).scan()
    assert [n for n, _ in listing] == [b"new/" + n for n in reversed(delivered)]
    assert listing == reference(md)


def test_deliveredNamesFromTheCurrentSecondWait(md):
    """A delivered message whose name's second is the current one is left out, as its mtime says."""
    names = maildir.UniqueNames(hostname=b"h", clock=clockOf([1700000000.2, 1700000001.5]), pid=1)
    first = maildir.deliver(str(md), b"", io.BytesIO(b"a"), names=names)
    maildir.deliver(str(md), b"", io.BytesIO(b"b"), names=names)
    m = maildirscan.Maildir(str(md), cache=maildirscan.ScanCache(), clock=lambda: 1700000001.9)
    assert m.scan() == [(b"new/" + first, 1)]


def test_openRefusesFifosAndDirectories(md):
    """
    Opening a listed name that is a FIFO neither blocks (no writer ever comes: it would
    jam the POP3 worker, or the whole daemon when it opens in the reactor's thread) nor
    succeeds; a directory is refused too.  Only regular files are messages.
    """
    import threading

    fifo = md / "new" / "1.fifo.host"
    os.mkfifo(fifo)
    os.mkdir(md / "cur" / "2.dir.host:2,")
    box = maildirscan.Maildir(str(md))
    outcome = []

    def opening(name):
        try:
            box.open(name).close()
            outcome.append("opened")
        except OSError:
            outcome.append("refused")

    t = threading.Thread(target=opening, args=(b"new/1.fifo.host",), daemon=True)
    t.start()
    t.join(3)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the stuck open go
        t.join(3)
        pytest.fail("open() of a FIFO blocked")
    opening(b"cur/2.dir.host:2,")
    assert outcome == ["refused", "refused"]


def test_updateDeletesAMessageWhereItNowIs(md):
    """
    A message deleted as new/x that another session has meanwhile moved to cur/x:2, (or
    whose flags changed in cur/) is unlinked where it now is, so it does not come back;
    one already gone from the maildir counts as deleted.  A real unlink failure counts.
    (qmail-pop3d answers the ENOENT '-ERR unable to unlink all deleted messages' and the
    message comes back at the next login.)
    """
    for sub, name in (("cur", "x:2,"), ("cur", "y:2,ST"), ("cur", "xy:2,"), ("new", "z")):
        (md / sub / name).write_bytes(b"m\n")
    os.mkdir(md / "cur" / "w:2,S")
    box = maildirscan.Maildir(str(md))
    assert box.update([b"new/x", b"cur/y:2,S", b"new/gone", b"new/z"], []) == 0
    assert sorted(os.listdir(md / "cur")) == ["w:2,S", "xy:2,"]
    assert os.listdir(md / "new") == []
    assert box.update([b"new/w"], []) == 1
