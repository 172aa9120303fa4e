"""
Maildir writing (spec/local.md §7 maildir rows, §10 maildirmake): L{deliver}, qmail-local's
tmp/ → fsync → link new/ protocol with modern unique names (L{UniqueNames}), and
L{maildirmake}.

Files L{deliver} writes carry their mtime and size in the name (L{deliveredStat},
L{DELIVERED_NAME}), so a reader (L{qmailtx.maildirscan}) lists them without a stat each;
the name format is owned here.

Writes only inside the maildir it is given (C{tmp/}, C{new/}; L{maildirmake} creates it
with C{cur/}).  Blocking: callers decide whether to run it in a thread or a worker process.
Must not import Twisted, the queue, sockets or the POP3 side (L{qmailtx.maildirscan},
L{qmailtx.pop3}).
"""

import errno
import os
import re
import socket
import threading
import time

from qmailtx.results import TempFailure
from qmailtx.safeio import writeAll

SUBDIRS = (b"tmp", b"new", b"cur")

DELIVERY_TRIES = 3
"""qmail-local tries this many unique names before giving up."""

COPY_CHUNK = 65536
"""Bytes per read while copying a message into tmp/."""

CHDIR_FAILED = b"Unable to chdir to maildir. (#4.2.1)"
READ_FAILED = b"Unable to read message. (#4.3.0)"
TEMP_ERROR = b"Temporary error on maildir delivery. (#4.3.0)"

# qmail's error_temp(): errno values that make chdir a temporary problem.
_TEMP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EAGAIN",
                 "EWOULDBLOCK", "ENFILE", "EMFILE", "ENOSPC", "EDQUOT", "ESTALE",
                 "EHOSTDOWN", "EHOSTUNREACH", "ECONNREFUSED", "ENETDOWN")
    if hasattr(errno, name)
)


def _fsPath(path):
    return os.fsencode(path)


def maildirmake(path, mode=0o700):
    """
    Create C{path} and its tmp/new/cur, each mode 0700; an existing directory is an
    error (L{FileExistsError}), as qmail's maildirmake.
    """
    path = _fsPath(path)
    os.mkdir(path, mode)
    for sub in SUBDIRS:
        os.mkdir(os.path.join(path, sub), mode)


def _hostPart(hostname):
    return hostname.replace(b"/", b"\\057").replace(b":", b"\\072")


class UniqueNames:
    """
    Maildir unique names C{<sec>.M<usec>P<pid>Q<n>.<host>}: the counter makes them unique
    inside one process, where the pid alone is not (spec/local.md §7 decision).  The
    microseconds have six digits, so that names of one second sort by time as bytes.
    """

    def __init__(self, hostname=None, clock=time.time, pid=None):
        if hostname is None:
            hostname = socket.gethostname().encode("utf-8", "surrogateescape")
        self.host = _hostPart(hostname)
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self._counter = 0
        self._lock = threading.Lock()

    def next(self):
        with self._lock:
            self._counter += 1
            counter = self._counter
        now = self.clock()
        sec = int(now)
        usec = int((now - sec) * 1000000)
        return b"%d.M%06dP%dQ%d.%s" % (sec, usec, self.pid, counter, self.host)


_names = None


def _defaultNames():
    global _names
    if _names is None or _names.pid != os.getpid():
        _names = UniqueNames()
    return _names


DELIVERED_NAME = re.compile(rb"(\d{10})\.M(\d{6})P\d+Q\d+\.[^:]*,S=(\d+)(?::|\Z)", re.S)
"""A name L{deliver} wrote: groups seconds, microseconds, size (see L{deliveredStat})."""


def deliveredStat(name):
    """
    C{(mtime_ns, size)} of a message file that L{deliver} wrote, read from its name alone;
    C{None} for any other name.

    L{deliver} names a message C{<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>} (ten digits of
    seconds, six of microseconds) and sets its mtime to exactly that second and microsecond,
    so a reader can sort and size such files without a stat per message.  For two such
    names, byte order is (time, name) order, whatever the filesystem's timestamp granularity.
    """
    m = DELIVERED_NAME.match(name)
    if m is None:
        return None
    sec, usec, size = m.groups()
    return int(sec + usec) * 1000, int(size)


def deliver(maildirPath, prefix, message, names=None, syncDirectory=True):
    """
    Write C{prefix} then the rest of C{message} (a readable binary file) as one new
    message in the maildir at C{maildirPath}: create C{tmp/<unique>} exclusively, write,
    set its mtime to the unique name's time, fsync, link to C{new/<unique>,S=<size>}
    (the Courier/Dovecot size field, so readers need not stat it; see L{deliveredStat}),
    unlink the tmp name, fsync C{new/}.

    @return: the file name (bytes) now in C{new/}.
    @raise TempFailure: with qmail-local's texts; every maildir failure is temporary.
    """
    names = names or _defaultNames()
    try:
        dirFd = os.open(_fsPath(maildirPath), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise TempFailure(TEMP_ERROR if e.errno in _TEMP_ERRNOS else CHDIR_FAILED)
    try:
        for attempt in range(DELIVERY_TRIES):
            unique = names.next()
            tmpName = b"tmp/" + unique
            try:
                fd = os.open(tmpName, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=dirFd)
            except FileExistsError:
                continue
            except OSError:
                raise TempFailure(TEMP_ERROR)
            try:
                _copy(fd, prefix, message)
                final = _stamp(fd, unique)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _unlinkQuietly(tmpName, dirFd)
                raise
            try:
                os.close(fd)
                os.link(tmpName, b"new/" + final, src_dir_fd=dirFd, dst_dir_fd=dirFd)
            except OSError:
                _unlinkQuietly(tmpName, dirFd)
                raise TempFailure(TEMP_ERROR)
            _unlinkQuietly(tmpName, dirFd)
            if syncDirectory:
                _syncDirectory(b"new", dirFd)
            return final
        raise TempFailure(TEMP_ERROR)
    finally:
        os.close(dirFd)


def _stamp(fd, unique):
    """
    Name the written file C{<unique>,S=<size>} and give it the unique name's time as atime
    and mtime, so that L{deliveredStat} of the name is the file's stat; a unique name
    L{deliveredStat} cannot read (a clock before 2001) keeps its own times.
    """
    try:
        final = unique + b",S=%d" % os.fstat(fd).st_size
        known = deliveredStat(final)
        if known is not None:
            os.utime(fd, ns=(known[0], known[0]))
    except OSError:
        raise TempFailure(TEMP_ERROR)
    return final


def _copy(fd, prefix, message):
    _writeAll(fd, prefix)
    while True:
        try:
            chunk = message.read(COPY_CHUNK)
        except OSError:
            raise TempFailure(READ_FAILED)
        if not chunk:
            return
        _writeAll(fd, chunk)


def _writeAll(fd, data):
    try:
        writeAll(fd, data)
    except OSError:
        raise TempFailure(TEMP_ERROR)


def _syncDirectory(name, dirFd):
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dirFd)
    except OSError:
        raise TempFailure(TEMP_ERROR)
    try:
        os.fsync(fd)
    except OSError:
        raise TempFailure(TEMP_ERROR)
    finally:
        os.close(fd)


def _unlinkQuietly(name, dirFd):
    try:
        os.unlink(name, dir_fd=dirFd)
    except OSError:
        pass
