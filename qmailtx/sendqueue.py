"""
qmail-send's side of the on-disk queue (spec/queue.md §4–9): blocking file work that the
L{qmailtx.send.Sender} runs in a thread, so the reactor never waits on an fsync or unlink.

Owns writing C{info/}, C{local/}, C{remote/} and C{bounce/}, and removing C{todo/}, C{intd/}
and C{mess/} once a message is preprocessed or finished; reads C{todo/} and C{mess/}.  Every
step keeps qmail's order, so a crash leaves only states S4/S5 of queue.md §3.  Emptied files
go to C{spare/} (L{qmailtx.spares}) when a pool is given.  Pure file I/O: must not import
Twisted, sockets or delivery code.
"""

import errno
import os
import time
from dataclasses import dataclass, field

from qmailtx.envelope import parseRecords
from qmailtx.queuefiles import syncFiles
from qmailtx.queuelayout import SPLIT
from qmailtx.rewrite import LOCAL, REMOTE
from qmailtx.spares import SPARE, unlinkQuietly as _unlink

CHANNELS = (LOCAL, REMOTE)

CLEANUP_AGE = 129600
"""36 hours: a C{mess/} file (by atime) or C{pid/} file this old, with no C{info}/C{todo},
is left over from a crashed injection."""

FINISH_RESERVE = 512
"""Places in the spare pool that finishing (in a thread, where an unlink may wait) leaves
for the C{todo/} files removed on the reactor thread: each message gives one more file than
it takes, so a full pool would otherwise make the reactor unlink."""
SMALL_MESS = 64 * 1024
"""Largest C{mess/} file a finished message gives to the spare pool instead of unlinking:
reusing a bigger one would hand its extra blocks back (a wait for the disk's discard) on the
reactor thread."""
READ_LIMIT = 64 * 1024 * 1024
"""Largest C{todo/}, C{info/}, channel or C{bounce/} file read (a message's envelope)."""


class UnknownRecord(Exception):
    """A C{todo/} file holds a record qmail-send does not know: leave it for later."""


@dataclass
class Record:
    """One recipient of a channel file: the byte offset of its C{T}/C{D} letter, the address."""

    offset: int
    address: bytes
    done: bool = False


@dataclass
class QueuedMessage:
    """
    A preprocessed message as the sender schedules it.

    @ivar birth: mtime of C{info/} (Unix seconds).
    @ivar channels: C{{"local"|"remote": (nextAttempt, [Record])}}, only existing files;
        C{nextAttempt} is the channel file's mtime (C{None} right after preprocessing:
        deliver now).
    @ivar bounce: whether C{bounce/<id>} exists.
    """

    msgid: int
    birth: float
    sender: bytes
    channels: dict = field(default_factory=dict)
    bounce: bool = False
    size: int = 0
    qp: bytes = b"?"
    uid: bytes = b"?"
    known: bool = False
    """Preprocessed by this process: its channel files are the ones in C{channels} and its
    C{intd/} is gone, so finishing need not try the others."""


_SPLIT_KINDS = frozenset(("mess", "info", LOCAL, REMOTE))


def path(queueDir, kind, msgid):
    """
    Where C{kind} (mess/info/local/remote split, todo/intd/bounce not) keeps C{msgid}
    (formatted directly: several per message on the reactor thread).
    """
    if kind in _SPLIT_KINDS:
        return f"{os.fspath(queueDir).rstrip('/')}/{kind}/{msgid % SPLIT}/{msgid}"
    return f"{os.fspath(queueDir).rstrip('/')}/{kind}/{msgid}"


def _read(name):
    """
    The first L{READ_LIMIT} bytes of C{name}.  Sized by C{fstat}: a buffered C{read(limit)}
    would map and shrink a buffer of the whole limit for every small envelope.
    """
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        want = min(os.fstat(fd).st_size, READ_LIMIT)
        chunks = []
        while want > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _remove(name, spares, reserve=0):
    """Take C{name} out of the queue: into C{spares} when it has room, else unlink it."""
    if spares is None or not spares.give(name, reserve):
        _unlink(name)


def _writeNew(name, data, opened, spares=None):
    """
    Create C{name} with C{data}, replacing a stale file of that name (from a spare file
    when C{spares} has one: rewritten in place and cut to length); its fd is appended to
    C{opened} (synced by the caller).
    """
    fd = spares.take(name, truncate=False) if spares is not None else None
    recycled = fd is not None
    if fd is None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600)
        except FileExistsError:
            _unlink(name)
            fd = os.open(name, flags, 0o600)
    opened.append(fd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if recycled:
        os.ftruncate(fd, len(data))
    return os.fstat(fd).st_mtime


def closeAll(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def channelRecords(data):
    """The C{T} (to do) records of a channel file with their offsets, C{D} ones as done."""
    records = []
    pos = 0
    while True:
        end = data.find(b"\0", pos)
        if end == -1:
            return records
        letter = data[pos:pos + 1]
        if letter in (b"T", b"D"):
            records.append(Record(pos, data[pos + 1:end], letter == b"D"))
        pos = end + 1


def _encodeChannel(addresses):
    out = bytearray()
    records = []
    for address in addresses:
        records.append(Record(len(out), address))
        out += b"T" + address + b"\0"
    return bytes(out), records


def preprocess(queueDir, msgid, rewrite):
    """
    qmail-send's handling of one C{todo/<id>} (queue.md §4): stale info/local/remote
    removed, new ones written and fsync'd, then C{intd/} and C{todo/} removed.

    @param rewrite: C{address -> (LOCAL|REMOTE, address)} (L{qmailtx.rewrite.Rewriter}).
    @return: a L{QueuedMessage}, or C{None} if C{todo/<id>} is gone.
    @raise UnknownRecord: the todo file has a record of an unknown type (nothing changed).
    @raise OSError: on trouble; C{todo/} stays for the next attempt.
    """
    ((_, result),) = preprocessBatch(queueDir, [msgid], rewrite)
    if isinstance(result, Exception):
        raise result
    return result


def _removeStale(name):
    """
    Unlink a channel file left by an earlier, crashed preprocessing.  It almost never
    exists; a failing C{unlink} takes the directory's lock, a C{stat} does not.  Only this
    thread writes these names, so the answer cannot change in between.
    """
    try:
        os.lstat(name)
    except FileNotFoundError:
        return
    _unlink(name)


def _stage(queueDir, msgid, rewrite, opened, spares):
    """Steps 1–3 of preprocessing: the new files written (not yet synced), todo kept."""
    try:
        data = _read(path(queueDir, "todo", msgid))
    except FileNotFoundError:
        return None
    message = QueuedMessage(msgid, 0, b"", known=True)
    targets = {LOCAL: [], REMOTE: []}
    for letter, value in parseRecords(data):
        if letter == b"u":
            message.uid = value
        elif letter == b"p":
            message.qp = value
        elif letter == b"F":
            message.sender = value
        elif letter == b"T":
            kind, address = rewrite(value)
            targets[kind].append(address)
        else:
            raise UnknownRecord(msgid)
    for kind in CHANNELS:
        if not targets[kind]:
            _removeStale(path(queueDir, kind, msgid))
    message.birth = _writeNew(path(queueDir, "info", msgid), b"F" + message.sender + b"\0",
                              opened, spares)
    for kind in CHANNELS:
        if targets[kind]:
            content, records = _encodeChannel(targets[kind])
            _writeNew(path(queueDir, kind, msgid), content, opened, spares)
            message.channels[kind] = (None, records)
    try:
        message.size = os.stat(path(queueDir, "mess", msgid)).st_size
    except OSError:
        message.size = 0
    message.bounce = os.path.exists(path(queueDir, "bounce", msgid))
    return message


def preprocessBatch(queueDir, msgids, rewrite, spares=None):
    """
    L{preprocess} for several ids: a list of C{(msgid, QueuedMessage | None | exception)}.

    Every message's info/local/remote files are written first and made durable together
    (one syncfs for the group, L{qmailtx.queue.syncFiles}); only then are the C{intd/} and
    C{todo/} entries removed, so a crash leaves each message in todo/ or fully preprocessed.
    With a L{SparePool}, new files are taken from it and the C{todo/} file goes into it.
    Blocking; the daemon runs the same three steps with only the flush in a thread
    (L{stageBatch}, L{syncFiles}, L{finishBatch}).
    """
    results, opened = stageBatch(queueDir, msgids, rewrite, spares)
    try:
        syncFiles(queueDir, opened)
    except OSError as e:
        return failBatch(results, e)
    finally:
        closeAll(opened)
    return finishBatch(queueDir, results, spares)


def stageBatch(queueDir, msgids, rewrite, spares=None):
    """
    Steps 1–3 of preprocessing for several ids: C{(results, fds)}, the results as
    L{preprocessBatch}'s and the descriptors of the files written, which the caller must
    make durable (L{syncFiles}) and close before L{finishBatch}.
    """
    results = []
    opened = []
    try:
        for msgid in msgids:
            try:
                results.append((msgid, _stage(queueDir, msgid, rewrite, opened, spares)))
            except (UnknownRecord, OSError) as e:
                results.append((msgid, e))
    except BaseException:
        closeAll(opened)
        raise
    return results, opened


def failBatch(results, error):
    """The staged results when their flush failed: every staged message keeps its todo/."""
    return [(msgid, error if isinstance(r, QueuedMessage) else r) for msgid, r in results]


def finishBatch(queueDir, results, spares=None):
    """
    Step 4, once the staged files are durable: C{intd/} and C{todo/} removed.  They are two
    links of one inode, so only the C{todo/} name may go to C{spares}: unlinking C{intd/}
    frees nothing.
    """
    for msgid, result in results:
        if isinstance(result, QueuedMessage):
            _unlink(path(queueDir, "intd", msgid))
            _remove(path(queueDir, "todo", msgid), spares)
    return results


def listTodo(queueDir):
    """The ids in C{todo/} (names that are all digits)."""
    return [int(n) for n in os.listdir(os.path.join(queueDir, "todo")) if n.isdigit()]


def loadMessage(queueDir, msgid):
    """
    One preprocessed message from its C{info}, channel and bounce files (restart), or
    C{None} when C{info} vanished; raises C{OSError} on trouble.
    """
    try:
        with open(path(queueDir, "info", msgid), "rb") as f:
            birth = os.fstat(f.fileno()).st_mtime
            records = parseRecords(f.read(READ_LIMIT))
    except FileNotFoundError:
        return None
    sender = b""
    for letter, value in records:
        if letter == b"F":
            sender = value
            break
    message = QueuedMessage(msgid, birth, sender)
    for kind in CHANNELS:
        try:
            with open(path(queueDir, kind, msgid), "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                message.channels[kind] = (mtime, channelRecords(f.read(READ_LIMIT)))
        except FileNotFoundError:
            pass
    message.bounce = os.path.exists(path(queueDir, "bounce", msgid))
    return message


def loadQueue(queueDir, spares=None):
    """
    Every preprocessed message (an C{info} without a C{todo}) as L{QueuedMessage}s, and
    warnings (text) for the ones that could not be read.  Loads C{spares} too; trouble
    with it only leaves it unused.
    """
    if spares is not None:
        try:
            spares.load()
        except OSError as e:
            warnings = [f"unable to use {SPARE}/: {e.strerror}"]
        else:
            warnings = []
    else:
        warnings = []
    todo = set(listTodo(queueDir))
    messages = []
    for i in range(SPLIT):
        top = os.path.join(queueDir, "info", str(i))
        for name in os.listdir(top):
            if not name.isdigit() or int(name) in todo:
                continue
            try:
                message = loadMessage(queueDir, int(name))
            except OSError as e:
                warnings.append(f"unable to read info/{i}/{name}: {e.strerror}")
                continue
            if message is not None:
                messages.append(message)
    return messages, warnings


def markDone(channelPath, offsets):
    """Rewrite the letter at each offset from C{T} to C{D} (qmail's markdone; no fsync)."""
    try:
        fd = os.open(channelPath, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        for offset in offsets:
            os.pwrite(fd, b"D", offset)
    finally:
        os.close(fd)


def appendBounce(queueDir, msgid, entry):
    """Append one failure entry to C{bounce/<id>}, and fsync it before the record is marked done."""
    fd = os.open(path(queueDir, "bounce", msgid),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(entry)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def removeChannels(queueDir, msgid, kinds):
    for kind in kinds:
        _unlink(path(queueDir, kind, msgid))


def readForBounce(queueDir, msgid):
    """C{(bounce/<id> contents or None, mess contents)}; raises C{OSError}."""
    try:
        text = _read(path(queueDir, "bounce", msgid))
    except FileNotFoundError:
        text = None
    with open(path(queueDir, "mess", msgid), "rb") as f:
        return text, f.read()


def finishMessages(queueDir, messages, spares=None):
    """
    Remove finished messages in qmail's order: channel files, C{bounce}, C{info}, any
    C{intd}, and C{mess} last: once C{mess} is gone its inode, hence the id, may belong to
    a new message at once, so nothing may be removed by that name afterwards (a crash in
    between leaves a C{mess} for the 36 h cleanup).  Channel and C{info} files go into
    C{spares} when given; C{mess} is always unlinked.

    @param messages: ids, or L{finishing} tuples naming the files known to exist (the
        others are not tried: a failing C{unlink} or C{rename} costs as much as one that
        works).
    @return: C{[(msgid, error text)]} for the ones that could not be removed.
    """
    troubles = []
    for item in messages:
        msgid, kinds, bounce, intd, info = finishing(item) if isinstance(item, int) else item
        try:
            for kind in kinds:
                _remove(path(queueDir, kind, msgid), spares, FINISH_RESERVE)
            if bounce:
                _unlink(path(queueDir, "bounce", msgid))
            if info:
                _remove(path(queueDir, "info", msgid), spares, FINISH_RESERVE)
            if intd:
                _unlink(path(queueDir, "intd", msgid))
            _unlink(path(queueDir, "mess", msgid))
        except OSError as e:
            troubles.append((msgid, e.strerror))
    return troubles


def finishing(msgid, kinds=CHANNELS, bounce=True, intd=True, info=True):
    """
    What L{finishMessages} removes of C{msgid}: the channel C{kinds} and, if flagged,
    C{bounce/}, C{info/} and C{intd/}, then C{mess/}; by default everything that may exist.
    """
    return (msgid, tuple(kinds), bounce, intd, info)


def retire(queueDir, msgid, kinds, spares):
    """
    The first steps of L{finishMessages} for a message without C{bounce/} or C{intd/}: its
    channel C{kinds} then C{info/} renamed into C{spares}, never unlinked (this runs on the
    reactor thread, where an unlink that frees a block would wait for the disk's discard).
    C{True} when they are gone; C{False} when the pool had no room, leaving the rest to
    L{finishMessages}.
    """
    if spares is None:
        return False
    for kind in tuple(kinds) + ("info",):
        if not spares.give(path(queueDir, kind, msgid), FINISH_RESERVE):
            return False
    return True


def retireMess(queueDir, msgid, spares):
    """
    The last step of L{finishMessages} after L{retire}, for a message of at most
    L{SMALL_MESS} bytes: C{mess/} renamed into C{spares}, so finishing needs no unlink (no
    block freed, no thread).  Its inode, the id, is then a spare: a new message may get it.
    C{True} when gone; C{False} leaves it to L{finishMessages}.
    """
    return spares is not None and spares.give(path(queueDir, "mess", msgid), FINISH_RESERVE)


def saveSchedule(queueDir, entries):
    """
    Persist next-attempt times as channel file mtimes (qmail-send does it when exiting).
    C{entries} are C{(kind, msgid, when)}; returns the C{(kind, msgid)} that failed.
    """
    failed = []
    for kind, msgid, when in entries:
        try:
            os.utime(path(queueDir, kind, msgid), (when, when))
        except FileNotFoundError:
            pass
        except OSError:
            failed.append((kind, msgid))
    return failed


def cleanupScan(queueDir, now=None, age=CLEANUP_AGE):
    """
    qmail-send's cleanup (queue.md §9): C{mess} files older than C{age} (atime) with neither
    C{info} nor C{todo} are removed with any C{intd}; so are old C{pid/} files.
    Returns how many files were removed.
    """
    now = time.time() if now is None else now
    removed = 0
    for i in range(SPLIT):
        top = os.path.join(queueDir, "mess", str(i))
        for name in os.listdir(top):
            if not name.isdigit():
                continue
            msgid = int(name)
            try:
                if os.stat(os.path.join(top, name)).st_atime > now - age:
                    continue
            except FileNotFoundError:
                continue
            if (os.path.exists(path(queueDir, "info", msgid))
                    or os.path.exists(path(queueDir, "todo", msgid))):
                continue
            _unlink(path(queueDir, "intd", msgid))
            _unlink(os.path.join(top, name))
            removed += 1
    pidDir = os.path.join(queueDir, "pid")
    for name in os.listdir(pidDir):
        full = os.path.join(pidDir, name)
        try:
            if os.stat(full).st_atime <= now - age:
                os.unlink(full)
                removed += 1
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    return removed
