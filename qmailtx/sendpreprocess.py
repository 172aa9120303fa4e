"""
qmail-send's preprocessing on disk (spec/queue.md §4): each C{todo/<id>} becomes its
C{info/}, C{local/} and C{remote/} files, written and made durable for the whole batch
before C{intd/} and C{todo/} are removed, so a crash leaves each message in C{todo/} or
fully preprocessed (states S4/S5 of queue.md §3).  Files are taken from C{spare/}
(L{qmailtx.spares}) when a pool is given, and the C{todo/} file goes back into it.

Blocking file work; the daemon's intake (L{qmailtx.sendtodo}) runs the staging here and only
the flush in a thread.  Writes C{info/ local/ remote/}, removes C{todo/ intd/}.  Pure file
I/O: must not import Twisted, sockets or delivery code.
"""

import os

from qmailtx.envelope import parseRecords
from qmailtx.queuefiles import syncFiles
from qmailtx.rewrite import LOCAL, REMOTE
from qmailtx.sendqueue import CHANNELS, QueuedMessage, Record, _read, _remove, path
from qmailtx.safeio import writeAll
from qmailtx.spares import unlinkQuietly as _unlink

class UnknownRecord(Exception):
    """A C{todo/} file holds a record qmail-send does not know: leave it for later."""


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
    writeAll(fd, data)
    if recycled:
        os.ftruncate(fd, len(data))
    return os.fstat(fd).st_mtime


def closeAll(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


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
    (one syncfs for the group, L{qmailtx.queuefiles.syncFiles}); only then are the
    C{intd/} and C{todo/} entries removed, so a crash leaves each message in todo/ or fully
    preprocessed.
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
