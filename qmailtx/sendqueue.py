"""
qmail-send's view of a queued message's files (spec/queue.md §4–8): where each kind lives
(L{path}), the records of a preprocessed message (L{QueuedMessage}, L{Record}), reading the
queue back at start (L{loadQueue}, checked first by L{unreadableQueue}) and a message for its
bounce, and recording delivery
results in place: a channel record marked done, a failure appended to C{bounce/}.

Blocking file work that L{qmailtx.send.Sender} runs in a thread, so the reactor never waits
on an fsync.  Writes C{local/ remote/} records in place and appends to C{bounce/}; reads
C{todo/ info/ local/ remote/ bounce/ mess/}.  Preprocessing is L{qmailtx.sendpreprocess},
removal L{qmailtx.sendfinish}.  Pure file I/O: must not import Twisted, sockets or delivery
code.
"""

import os
from dataclasses import dataclass, field

from qmailtx.envelope import parseRecords
from qmailtx.queuelayout import SPLIT
from qmailtx.rewrite import LOCAL, REMOTE
from qmailtx.safeio import writeAll
from qmailtx.spares import SPARE, unlinkQuietly as _unlink

CHANNELS = (LOCAL, REMOTE)
READ_LIMIT = 64 * 1024 * 1024
"""Largest C{todo/}, C{info/}, channel or C{bounce/} file read (a message's envelope)."""


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


_INFO_DIRS = [os.path.join("info", str(i)) for i in range(SPLIT)]
"""The directories L{loadQueue} lists besides C{todo/}."""


def unreadableQueue(queueDir):
    """
    Why L{loadQueue} would fail (C{"todo/: not a directory"}), or C{None}: the directories
    it lists opened, not read, so that a daemon that could not load its queue refuses to
    start before it listens instead of after.
    """
    for name in ["todo"] + _INFO_DIRS:
        try:
            os.close(os.open(os.path.join(queueDir, name), os.O_RDONLY | os.O_DIRECTORY))
        except OSError as e:
            return f"{name}/: {os.strerror(e.errno).lower()}"
    return None


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
    for info in _INFO_DIRS:
        for name in os.listdir(os.path.join(queueDir, info)):
            if not name.isdigit() or int(name) in todo:
                continue
            try:
                message = loadMessage(queueDir, int(name))
            except OSError as e:
                warnings.append(f"unable to read {info}/{name}: {e.strerror}")
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
        writeAll(fd, entry)
        os.fsync(fd)
    finally:
        os.close(fd)


def readForBounce(queueDir, msgid):
    """C{(bounce/<id> contents or None, mess contents)}; raises C{OSError}."""
    try:
        text = _read(path(queueDir, "bounce", msgid))
    except FileNotFoundError:
        text = None
    with open(path(queueDir, "mess", msgid), "rb") as f:
        return text, f.read()
