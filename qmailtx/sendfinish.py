"""
qmail-send's removal of files (spec/queue.md §8–9): a finished message's channel, C{bounce/},
C{info/}, C{intd/} and C{mess/} files in qmail's order (or renamed into C{spare/},
L{qmailtx.spares}), a finished channel's file, the next-attempt times kept as channel file
mtimes when qmail-send exits, and the 36-hour cleanup of what crashed injections left.

Blocking file work that L{qmailtx.send.Sender} runs in a thread, except L{retire} and
L{retireMess} (renames on the reactor thread).  Removes C{local/ remote/ bounce/ info/
intd/ mess/ pid/} files, sets channel file times.  Pure file I/O: must not import Twisted,
sockets or delivery code.
"""

import errno
import os
import time

from qmailtx.queuelayout import SPLIT
from qmailtx.sendqueue import CHANNELS, _remove, path
from qmailtx.spares import unlinkQuietly as _unlink

CLEANUP_AGE = 129600
"""36 hours: a C{mess/} file (by atime, or ctime if later) or C{pid/} file this old, with no C{info}/C{todo},
is left over from a crashed injection."""

FINISH_RESERVE = 512
"""Places in the spare pool that finishing (in a thread, where an unlink may wait) leaves
for the C{todo/} files removed on the reactor thread: each message gives one more file than
it takes, so a full pool would otherwise make the reactor unlink."""
SMALL_MESS = 64 * 1024
"""Largest C{mess/} file a finished message gives to the spare pool instead of unlinking:
reusing a bigger one would hand its extra blocks back (a wait for the disk's discard) on the
reactor thread."""


def removeChannels(queueDir, msgid, kinds):
    for kind in kinds:
        _unlink(path(queueDir, kind, msgid))


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


def _lastTouched(st):
    """
    qmail judges a file's age by its atime; a spare inode (L{qmailtx.spares}) brings an
    old atime into C{pid/} and C{mess/} while a message is being written on it, and its
    rename there sets only the ctime.  The later of the two keeps such a file out of the
    cleanup, and is never earlier than what qmail would use.
    """
    return max(st.st_atime, st.st_ctime)


def cleanupScan(queueDir, now=None, age=CLEANUP_AGE):
    """
    qmail-send's cleanup (queue.md §9): C{mess} files older than C{age} (L{_lastTouched}) with neither
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
                if _lastTouched(os.stat(os.path.join(top, name))) > now - age:
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
            if _lastTouched(os.stat(full)) <= now - age:
                os.unlink(full)
                removed += 1
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    return removed
