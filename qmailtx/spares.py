"""
Spare queue files: emptied files kept in C{queue/spare/} and renamed back into the queue
as new ones (L{SparePool}).

Owns C{spare/} and nothing else; the caller decides which files may go there (never a
C{mess/} file while it names a message).  Pure file I/O: must not import Twisted, sockets,
the queue or delivery code.
"""

import errno
import os
import threading

SPARE = "spare"
"""Directory of the queue holding files kept for reuse by L{SparePool}."""
SPARE_LIMIT = 4096
"""Most files kept in C{spare/}; beyond it finished files are unlinked as before."""
HAND_OUT = 64
"""Names the queue manager's pool hands a receiver that asks (L{SparePool.handOut})."""
HAND_OUT_KEEP = 128
"""Names the queue manager's pool keeps for its own new files when a receiver asks."""


def unlinkQuietly(name):
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


class SparePool:
    """
    Emptied queue files (a preprocessed C{todo/} entry, finished C{info/} and channel files)
    renamed into C{spare/} instead of unlinked, and renamed back as the next message's
    C{info/} and channel files.  On a filesystem without a journal, ext4 skips every inode
    freed in the last minutes when it allocates one, checking each in the buffer cache:
    under a steady queue churn that scan was a third of the daemon's CPU.  A rename neither
    frees nor allocates an inode.

    A spare's content means nothing: it is truncated when taken, and a crash leaves at
    worst a taken spare under a name that L{qmailtx.sendpreprocess.preprocessBatch} rewrites
    (its C{todo/} is still there).  Nothing else reads C{spare/}; a receiver process takes
    only the names this pool handed it (L{handOut}, L{adopt}), so no name has two takers.
    Thread-safe: preprocessing and finishing run in several threads.
    """

    def __init__(self, queueDir, limit=SPARE_LIMIT):
        self.directory = os.path.join(queueDir, SPARE)
        self.limit = limit
        self._lock = threading.Lock()
        self._names = []
        self._count = 0
        self._next = 0
        self._ready = False

    def load(self):
        """Create C{spare/} if needed and adopt what it holds (extras unlinked); blocking."""
        try:
            os.mkdir(self.directory, 0o700)
        except FileExistsError:
            pass
        names = [n for n in os.listdir(self.directory) if n.isdigit()]
        for name in names[self.limit:]:
            unlinkQuietly(os.path.join(self.directory, name))
        with self._lock:
            self._names = names[:self.limit]
            self._count = len(self._names)
            self._next = max((int(n) for n in names), default=-1) + 1
            self._ready = True

    def __len__(self):
        return len(self._names)

    def give(self, name, reserve=0):
        """
        Remove C{name} from the queue by renaming it into the pool: C{True} when it is gone
        (kept, or it did not exist), C{False} when the caller must unlink it.

        @param reserve: refuse while fewer than this many places are free, keeping them
            for callers that must not unlink (an unlink may wait for the disk).
        """
        with self._lock:
            if not self._ready or self._count >= self.limit - reserve:
                return False
            self._count += 1
            spare = str(self._next)
            self._next += 1
        try:
            os.rename(name, os.path.join(self.directory, spare))
        except OSError as e:
            with self._lock:
                self._count -= 1
            return e.errno == errno.ENOENT
        with self._lock:
            self._names.append(spare)
        return True

    def handOut(self, most, keep=0):
        """
        Up to C{most} of the pool's names, no longer its own: the caller hands them to one
        other process (a receiver), which alone then takes them.  Their files stay in
        C{spare/}; a name the taker never uses is adopted again by the next L{load}.

        @param keep: hand out only what exceeds this many, which the pool keeps for its
            own process.
        """
        with self._lock:
            count = max(0, min(most, len(self._names) - keep))
            if not count:
                return []
            names = self._names[-count:]
            del self._names[-count:]
            self._count -= count
        return names

    def adopt(self, names):
        """Take C{names} (handed out by another process's pool) as this pool's spares."""
        names = [n for n in names if n.isdigit()]
        with self._lock:
            self._names.extend(names)
            self._count += len(names)

    def take(self, name, truncate=True):
        """
        A spare renamed to C{name} (which must not exist, or is stale: the rename replaces
        it) and opened for writing at offset 0, mode 0600: its descriptor, or C{None} when
        the pool has none.

        @param truncate: open it empty.  With C{False} the old content stays and the caller
            overwrites it and cuts it to length (C{ftruncate}): an emptied file gives its
            blocks back, which on a filesystem mounted with C{discard} waits for the
            device's discard, and the next write allocates anew; a small file rewritten in
            place keeps its block.
        """
        while True:
            with self._lock:
                if not self._names:
                    return None
                spare = self._names.pop()
                self._count -= 1
            try:
                os.rename(os.path.join(self.directory, spare), name)
            except OSError:
                continue
            try:
                fd = os.open(name, os.O_WRONLY | (os.O_TRUNC if truncate else 0)
                             | os.O_CLOEXEC)
            except OSError:
                unlinkQuietly(name)
                return None
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                os.close(fd)
                unlinkQuietly(name)
                return None
            return fd
