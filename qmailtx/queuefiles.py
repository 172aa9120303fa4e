"""
The file-level steps of qmail-queue's protocol (spec/queue.md §3), shared by the writer and
the group commit: making files durable (one syncfs(2) for a group, else fsyncs), a
directory's fsync, writing a whole buffer, removing a partial file, and the exit code a
failed step maps to.

Writes only what its callers name (they own C{pid/ mess/ intd/ todo/}).  Must not import
Twisted, the queue modules, delivery (send, local, remote) or protocol modules.
"""

import os

from qmailtx.results import qqExitFailure


class _Trouble(Exception):
    """A step failed; C{code} is qmail-queue's exit code for it."""

    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def _failureFor(code):
    return qqExitFailure(code)


GROUP_SYNC_MIN = 2
"""Batches at least this large are made durable with one syncfs(2) instead of two fsyncs a
message: one journal commit for the whole group is what lets concurrent SMTP sessions share
the disk's flush latency."""


def _loadSyncfs():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]

    def call(fd):
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return call


_syncfs = _loadSyncfs()


def syncFiles(queueDir, fds, dirs=()):
    """
    Make the files open as C{fds} and the directories C{dirs} (their entries) durable: one
    syncfs(2) of the queue's filesystem for two or more things (a single journal commit),
    else an fsync of each.  Raises C{OSError}.
    """
    if _syncfs is not None and len(fds) + len(dirs) >= GROUP_SYNC_MIN:
        dirFd = os.open(queueDir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _syncfs(dirFd)
        finally:
            os.close(dirFd)
        return
    for fd in fds:
        os.fsync(fd)
    for path in dirs:
        _fsyncDir(path)


def _fsyncDir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path):
    """qmail-queue's cleanup of a partial file: truncate (frees space even if unlink fails), unlink."""
    try:
        os.truncate(path, 0)
        os.unlink(path)
    except OSError:
        pass

