"""
qmail's queue layout (spec/queue.md §2): the directories and lock files of C{queue/} with
the modes of qmail's C{hier.c}, the split of C{mess/ info/ local/ remote/} into
L{SPLIT} subdirectories, and the C{lock/trigger} wake-up.

Creates the layout (every directory, C{lock/tcpto}, C{lock/sendmutex}, C{lock/trigger})
and writes nothing inside it afterwards but the trigger's byte.  Pure file work: must not
import Twisted, the queue writer, delivery (send, local, remote) or protocol modules.
"""

import os
import stat

from qmailtx.safeio import writeAtomically

SPLIT = 23

_SPLIT_DIRS = (("mess", 0o750), ("info", 0o700), ("local", 0o700), ("remote", 0o700))
_PLAIN_DIRS = (("pid", 0o700), ("intd", 0o700), ("todo", 0o750), ("bounce", 0o700))
TCPTO_SIZE = 1024


def _own(path, uid, gid):
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def _dir(path, mode, uid, gid):
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    os.chmod(path, mode)
    _own(path, uid, gid)


def createLayout(queueDir, uid=None, gid=None):
    """
    Create every directory and lock file of qmail's queue under C{queueDir} (the path
    of C{queue/} itself), with the modes of qmail's C{hier.c}.

    Idempotent: what exists keeps its content (an existing C{tcpto} table or C{trigger}
    FIFO is not replaced) and gets the right mode and owner.  C{uid}/C{gid}, when given,
    own everything (qmailtx runs the queue under one account; qmail used four).
    Raises C{OSError}.
    """
    _dir(queueDir, 0o750, uid, gid)
    for name, mode in _PLAIN_DIRS:
        _dir(os.path.join(queueDir, name), mode, uid, gid)
    for name, mode in _SPLIT_DIRS:
        top = os.path.join(queueDir, name)
        _dir(top, mode, uid, gid)
        for i in range(SPLIT):
            _dir(os.path.join(top, str(i)), mode, uid, gid)
    lock = os.path.join(queueDir, "lock")
    _dir(lock, 0o750, uid, gid)

    tcpto = os.path.join(lock, "tcpto")
    if not os.path.exists(tcpto):
        writeAtomically(tcpto, b"\0" * TCPTO_SIZE)
    os.chmod(tcpto, 0o644)
    _own(tcpto, uid, gid)

    mutex = os.path.join(lock, "sendmutex")
    if not os.path.exists(mutex):
        writeAtomically(mutex, b"")
    os.chmod(mutex, 0o600)
    _own(mutex, uid, gid)

    trigger = os.path.join(lock, "trigger")
    try:
        st = os.lstat(trigger)
    except FileNotFoundError:
        os.mkfifo(trigger, 0o622)
    else:
        if not stat.S_ISFIFO(st.st_mode):
            os.unlink(trigger)
            os.mkfifo(trigger, 0o622)
    os.chmod(trigger, 0o622)
    _own(trigger, uid, gid)


def splitName(msgid):
    """The split subdirectory name (C{str}) of message C{msgid}."""
    return str(msgid % SPLIT)


def pullTrigger(queueDir):
    """
    Wake qmail-send: one byte to C{lock/trigger} without blocking; nobody listening,
    a full pipe or a missing FIFO are all fine (qmail's C{triggerpull}).
    """
    try:
        fd = os.open(os.path.join(queueDir, "lock", "trigger"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)
