"""
Maildir writing and reading (spec/local.md §7 maildir rows, spec/pop3.md §3).

Owns the maildir layout: L{deliver} (qmail-local's tmp/ → fsync → link new/ protocol with
modern unique names), L{maildirmake}, and the reader side qmail-pop3d needs: L{Maildir}
(scan with a per-maildir cache keyed on directory mtimes, tmp/ cleanup, the QUIT update) and
L{Transmitter} (the RETR/TOP line encoding, streaming).

Files L{deliver} writes carry their mtime and size in the name (L{deliveredStat}), so a scan
lists them without a stat each.  That trusts a delivered file's mtime never to change (maildir
messages are never rewritten); a restore that reset every mtime, or a filesystem that cannot
keep microseconds, is caught by stat'ing one file per scan, a single file touched by hand is
not (it keeps its delivery-time place in the listing).

Writes only inside the maildir it is given (C{tmp/}, C{new/}, C{cur/}).  Blocking: callers
decide whether to run it in a thread or a worker process.  Must not import Twisted, the
queue or sockets.
"""

import errno
import operator
import os
import re
import socket
import threading
import time

from qmailtx.results import TempFailure

SUBDIRS = (b"tmp", b"new", b"cur")

TMP_MAX_AGE = 36 * 3600
"""qmail-pop3d removes tmp/ files whose atime is older than this (seconds)."""

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


_DELIVERED = re.compile(rb"(\d{10})\.M(\d{6})P\d+Q\d+\.[^:]*,S=(\d+)(?::|\Z)", re.S)


def deliveredStat(name):
    """
    C{(mtime_ns, size)} of a message file that L{deliver} wrote, read from its name alone;
    C{None} for any other name.

    L{deliver} names a message C{<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>} (ten digits of
    seconds, six of microseconds) and sets its mtime to exactly that second and microsecond,
    so a reader can sort and size such files without a stat per message.  For two such
    names, byte order is (time, name) order, whatever the filesystem's timestamp granularity.
    """
    m = _DELIVERED.match(name)
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
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
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

    def putListing(self, path, value):
        with self._lock:
            self._listings.pop(path, None)
            if len(self._listings) >= self.maxDirectories:
                del self._listings[next(iter(self._listings))]
            self._listings[path] = value

    def get(self, path):
        with self._lock:
            return self._dirs.get(path)

    def put(self, path, entry):
        with self._lock:
            self._dirs.pop(path, None)
            if len(self._dirs) >= self.maxDirectories:
                del self._dirs[next(iter(self._dirs))]
            self._dirs[path] = entry

    def forget(self, path):
        with self._lock:
            self._dirs.pop(path, None)


def _scanDirectory(path, cache, nowNs):
    """
    {name: (mtime_ns, size)} for the visible files of one subdirectory.  New names are read
    in byte order: the listing's sort by (mtime, name) then finds long sorted runs (one for
    names L{deliver} wrote), and a first scan of 50,000 names took 20% less time.
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
    files L{deliver} wrote, else from a stat.  One of the named files is stat'ed to check
    that the names still tell the truth here; if not (a filesystem with coarse timestamps,
    a restore that did not keep mtimes), every file is stat'ed.
    """
    entries = {}
    others = []
    match = _DELIVERED.match
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
        self.path = _fsPath(path)
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
        """Open a listed message for reading (a binary file); raises L{OSError}."""
        if b"/" in name[4:] or name[:4] not in (b"new/", b"cur/"):
            raise OSError(errno.EINVAL, "not a message name")
        return open(os.path.join(self.path, name), "rb", buffering=0)

    def update(self, deleted, kept):
        """
        qmail-pop3d's UPDATE: unlink every name in C{deleted}, then rename every name in
        C{kept} that is in new/ to C{cur/<x>:2,} (rename errors ignored).

        @return: how many unlinks failed (qmail-pop3d prints one error line for each).
        """
        failed = 0
        for name in deleted:
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
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


class Transmitter:
    """
    qmail-pop3d's message encoding, streaming: lines split at LF, a leading C{.} doubled,
    every line ended CRLF (a last line without LF too); with C{bodyLines} set, stop before
    body line C{bodyLines + 1}.  L{finish} adds the extra empty line and the C{.} line.
    """

    def __init__(self, bodyLines=None):
        self.bodyLines = bodyLines
        self.atLineStart = True
        self.inHeader = True
        self.done = False
        self._partial = b""

    def feed(self, chunk):
        """Encode C{chunk}; returns the bytes to send (may be empty)."""
        if self.done or not chunk:
            return b""
        if self.bodyLines is None:
            out = chunk.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
            if self.atLineStart and chunk[:1] == b".":
                out = b"." + out
            self.atLineStart = chunk[-1:] == b"\n"
            return out
        return self._feedLines(chunk)

    def _feedLines(self, chunk):
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if not self._line(line, out):
                self.done = True
                break
        return b"".join(out)

    def _line(self, line, out):
        if not self.inHeader:
            if self.bodyLines <= 0:
                return False
            self.bodyLines -= 1
        elif not line:
            self.inHeader = False
        out.append(b"." + line + b"\r\n" if line[:1] == b"." else line + b"\r\n")
        return True

    def finish(self):
        """The bytes that end the transmission."""
        out = []
        if self.bodyLines is None:
            if not self.atLineStart:
                out.append(b"\r\n")
        elif not self.done and self._partial:
            self._line(self._partial, out)
        self.done = True
        out.append(b"\r\n.\r\n")
        return b"".join(out)
