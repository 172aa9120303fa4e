"""
Maildir reading for qmail-pop3d (spec/pop3.md §3): L{Maildir} (entered, cleaned and listed
once at login with a per-maildir L{ScanCache} keyed on directory mtimes; changed only by the
QUIT update), L{Listing}, L{uidOf}.

Files L{qmailtx.maildir.deliver} wrote carry their mtime and size in the name
(L{qmailtx.maildir.DELIVERED_NAME}), so a scan lists them without a stat each.  That trusts a
delivered file's mtime never to change (maildir messages are never rewritten); a restore that
reset every mtime, or a filesystem that cannot keep microseconds, is caught by stat'ing one
file per scan, a single file touched by hand is not (it keeps its delivery-time place in the
listing).

Writes only inside the maildir it is given: removes old C{tmp/} files, unlinks deleted
messages, renames kept ones from C{new/} to C{cur/}.  Blocking: callers decide whether to run
it in a thread or a worker process.  Must not import Twisted, the queue, sockets or
protocols.
"""

import errno
import operator
import os
import stat
import threading
import time

from qmailtx.maildir import DELIVERED_NAME

TMP_MAX_AGE = 36 * 3600
"""qmail-pop3d removes tmp/ files whose atime is older than this (seconds)."""


def uidOf(name):
    """The UIDL of a listed name: the base name up to the first C{:} (survives new→cur)."""
    return name[4:].split(b":", 1)[0]


class NoMaildir(Exception):
    """The maildir cannot be entered (qmail-pop3d: C{this user has no $HOME/Maildir})."""


class ScanError(Exception):
    """new/ or cur/ could not be listed (qmail-pop3d: C{unable to scan $HOME/Maildir})."""


class _DirCache:
    """What one scan of one subdirectory learned: its mtime and each file's (mtime, size)."""

    __slots__ = ("mtime", "scannedAt", "entries")

    def __init__(self, mtime, scannedAt, entries):
        self.mtime = mtime
        self.scannedAt = scannedAt
        self.entries = entries


SCAN_CACHE_MARGIN_NS = 2 * 10**9
"""A cached listing is trusted only if taken this long after the directory's mtime, so a
change within one timestamp tick of the scan is never missed."""


class Listing(list):
    """
    One scan result, C{[(name, size)]}.  C{version} names its contents (an unchanged maildir
    yields the very same object again), and C{replies} lets callers keep what they derived
    from it, such as a formatted LIST.
    """

    __slots__ = ("version", "replies", "__weakref__")

    def __init__(self, items=(), version=None):
        list.__init__(self, items)
        self.version = version if version is not None else os.urandom(8).hex().encode()
        self.replies = {}


_nameAndSize = operator.itemgetter(1, 2)


class ScanCache:
    """
    Listings of maildir subdirectories kept between logins, keyed by path.  Maildir files
    never change once in new/ or cur/, so a file name seen before keeps its size and mtime;
    an unchanged directory mtime means an unchanged listing.
    """

    def __init__(self, maxDirectories=256):
        self.maxDirectories = maxDirectories
        self._dirs = {}
        self._listings = {}
        self._lock = threading.Lock()

    def listing(self, path):
        with self._lock:
            return self._listings.get(path)

    def _putBounded(self, table, path, value):
        """Store C{value} as the newest entry, dropping the oldest beyond L{maxDirectories}."""
        with self._lock:
            table.pop(path, None)
            if len(table) >= self.maxDirectories:
                del table[next(iter(table))]
            table[path] = value

    def putListing(self, path, value):
        self._putBounded(self._listings, path, value)

    def get(self, path):
        with self._lock:
            return self._dirs.get(path)

    def put(self, path, entry):
        self._putBounded(self._dirs, path, entry)

    def forget(self, path):
        with self._lock:
            self._dirs.pop(path, None)


def _scanDirectory(path, cache, nowNs):
    """
    {name: (mtime_ns, size)} for the visible files of one subdirectory.  New names are read
    in byte order: the listing's sort by (mtime, name) then finds long sorted runs (one for
    names L{qmailtx.maildir.deliver} wrote), and a first scan of 50,000 names took 20% less time.
    """
    st = os.stat(path)
    cached = cache.get(path) if cache is not None else None
    if (cached is not None and cached.mtime == st.st_mtime_ns
            and cached.scannedAt - cached.mtime >= SCAN_CACHE_MARGIN_NS):
        return cached.entries
    old = cached.entries if cached is not None else {}
    entries = {}
    unknown = []
    for name in os.listdir(path):
        if name.startswith(b"."):
            continue
        known = old.get(name)
        if known is not None:
            entries[name] = known
        else:
            unknown.append(name)
    if unknown:
        unknown.sort()
        entries.update(_readNames(path, unknown))
    if cache is not None:
        cache.put(path, _DirCache(st.st_mtime_ns, nowNs, entries))
    return entries


def _readNames(path, names):
    """
    {name: (mtime_ns, size)} for the files of C{names} that still exist: from the name for
    files L{qmailtx.maildir.deliver} wrote, else from a stat.  One of the named files is
    stat'ed to check that the names still tell the truth here; if not (a filesystem with
    coarse timestamps, a restore that did not keep mtimes), every file is stat'ed.
    """
    entries = {}
    others = []
    match = DELIVERED_NAME.match
    for name in names:
        m = match(name)
        if m is None:
            others.append(name)
        else:
            sec, usec, size = m.groups()
            entries[name] = (int(sec + usec) * 1000, int(size))
    if entries and not _namesTellTruth(path, entries):
        others.extend(entries)
        entries = {}
    if others:
        entries.update(_statNames(path, others))
    return entries


def _namesTellTruth(path, entries):
    name, known = next(iter(entries.items()))
    try:
        st = os.stat(os.path.join(path, name))
    except OSError:
        return False
    return (st.st_mtime_ns, st.st_size) == known


STAT_THREADS = 2
"""Threads that stat a large listing's new names: stat releases the GIL, so a 50,000-file
first scan can finish sooner.  On the 2-CPU test machine two threads were as fast as one and
four were 25% slower (each stat's GIL hand-off costs about what the stat does)."""

STAT_PARALLEL_MIN = 2000
"""Fewer new names than this are stat'ed in the calling thread."""


def _statChunk(dirFd, names):
    out = []
    for name in names:
        try:
            st = os.stat(name, dir_fd=dirFd)
        except FileNotFoundError:
            continue
        out.append((name, (st.st_mtime_ns, st.st_size)))
    return out


def _statNames(path, names):
    """{name: (mtime_ns, size)} for the files of C{names} that still exist."""
    dirFd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if len(names) < STAT_PARALLEL_MIN:
            return dict(_statChunk(dirFd, names))
        from concurrent.futures import ThreadPoolExecutor

        chunks = [names[i::STAT_THREADS] for i in range(STAT_THREADS)]
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            results = list(pool.map(lambda c: _statChunk(dirFd, c), chunks))
        out = {}
        for r in results:
            out.update(r)
        return out
    finally:
        os.close(dirFd)


class Maildir:
    """
    One user's maildir as qmail-pop3d sees it: entered, cleaned and listed once at login;
    changed only by L{update} at QUIT.

    @ivar path: the maildir (bytes).
    """

    def __init__(self, path, cache=None, clock=time.time):
        self.path = os.fsencode(path)
        self.cache = cache
        self.clock = clock

    def check(self):
        """Raise L{NoMaildir} unless C{path} is a directory we may enter."""
        try:
            st = os.stat(self.path)
        except OSError:
            raise NoMaildir()
        if not os.path.isdir(self.path) or not os.access(self.path, os.X_OK):
            raise NoMaildir()
        return st

    def cleanTmp(self):
        """Remove tmp/ files not starting with C{.} whose atime is older than 36 hours."""
        tmp = os.path.join(self.path, b"tmp")
        limit = self.clock() - TMP_MAX_AGE
        try:
            with os.scandir(tmp) as it:
                for d in it:
                    if d.name.startswith(b"."):
                        continue
                    try:
                        if d.stat(follow_symlinks=False).st_atime < limit:
                            os.unlink(d.path)
                    except OSError:
                        pass
        except OSError:
            pass

    def scan(self):
        """
        The message list: C{[(name, size)]} with name C{new/x} or C{cur/x}, every visible
        file whose mtime is before the current second, by mtime then name.

        @raise ScanError: new/ or cur/ cannot be listed.
        """
        now = self.clock()
        nowNs = int(now * 10**9)
        secondStartNs = int(now) * 10**9
        scanned = []
        for sub in (b"new", b"cur"):
            try:
                scanned.append(_scanDirectory(os.path.join(self.path, sub), self.cache, nowNs))
            except OSError:
                raise ScanError()
        previous = self.cache.listing(self.path) if self.cache is not None else None
        if (previous is not None and previous[0] is scanned[0] and previous[1] is scanned[1]
                and not previous[2]):
            return previous[3]
        found = []
        for sub, entries in zip((b"new/", b"cur/"), scanned):
            found += [(mtime, sub + name, size) for name, (mtime, size) in entries.items()
                      if mtime < secondStartNs]
        excluded = len(found) < len(scanned[0]) + len(scanned[1])
        found.sort()
        result = Listing(map(_nameAndSize, found))
        if self.cache is not None:
            self.cache.putListing(self.path, (scanned[0], scanned[1], excluded, result))
        return result

    def login(self):
        """L{check}, L{cleanTmp}, L{scan}: qmail-pop3d's start-up steps 2–4."""
        self.check()
        self.cleanTmp()
        return self.scan()

    def open(self, name):
        """
        Open a listed message for reading (a binary file); raises L{OSError}.

        Opened non-blocking and refused unless it is a regular file: a FIFO put in a
        maildir would otherwise block the open until a writer came (for ever, jamming the
        owner's worker, or the whole daemon where the open runs in the reactor's thread),
        and a directory would open and then fail to read.
        """
        if b"/" in name[4:] or name[:4] not in (b"new/", b"cur/"):
            raise OSError(errno.EINVAL, "not a message name")
        fd = os.open(os.path.join(self.path, name),
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.set_blocking(fd, True)
            return open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def update(self, deleted, kept):
        """
        qmail-pop3d's UPDATE: unlink every name in C{deleted}, then rename every name in
        C{kept} that is in new/ to C{cur/<x>:2,} (rename errors ignored).

        A deleted name that is gone was moved meanwhile (another session renamed new/x to
        cur/x:2,, or a reader changed its flags in cur/): it is unlinked where it now is,
        found by its uid, so it does not come back at the next login.  qmail-pop3d counts
        that ENOENT as a failure and leaves the message; a message gone from the maildir
        altogether counts as deleted here.

        @return: how many unlinks failed (qmail-pop3d prints one error line for each).
        """
        failed = 0
        moved = None
        for name in deleted:
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                if moved is None:
                    moved = self._curByUid()
                if moved is False:
                    failed += 1
                    continue
                for now in moved.get(uidOf(name), ()):
                    try:
                        os.unlink(os.path.join(self.path, b"cur", now))
                    except FileNotFoundError:
                        pass
                    except OSError:
                        failed += 1
            except OSError:
                failed += 1
        moved = {}
        for name in kept:
            if not name.startswith(b"new/"):
                continue
            base = name[4:]
            try:
                os.rename(os.path.join(self.path, name),
                          os.path.join(self.path, b"cur/" + base + b":2,"))
                moved[base] = base + b":2,"
            except OSError:
                pass
        self._noteUpdate(deleted, moved)
        return failed

    def _curByUid(self):
        """{uid: [names in cur/]}, or C{False} if cur/ cannot be listed."""
        found = {}
        try:
            names = os.listdir(os.path.join(self.path, b"cur"))
        except OSError:
            return False
        for name in names:
            if not name.startswith(b"."):
                found.setdefault(name.split(b":", 1)[0], []).append(name)
        return found

    def _noteUpdate(self, deleted, moved):
        """Carry what we know across our own renames so the next login needs no stats."""
        if self.cache is None or not (deleted or moved):
            return
        newPath = os.path.join(self.path, b"new")
        curPath = os.path.join(self.path, b"cur")
        newCache = self.cache.get(newPath)
        curCache = self.cache.get(curPath)
        if curCache is not None and newCache is not None:
            entries = dict(curCache.entries)
            for name in deleted:
                if name.startswith(b"cur/"):
                    entries.pop(name[4:], None)
            for base, target in moved.items():
                known = newCache.entries.get(base)
                if known is not None:
                    entries[target] = known
            self.cache.put(curPath, _DirCache(0, 0, entries))
        self.cache.put(newPath, _DirCache(0, 0, {}))
