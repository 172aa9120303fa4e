"""
C{qmailtx qmlock [-v] [-r SECS] [-t SECS] NAME COMMAND [ARGS...]}: run COMMAND so that only
one instance per NAME runs at a time, e.g. C{|preline qmlock list list-handler} in a
C{.qmail} file.

Others wait, retrying every C{-r} seconds (default 1); a lock older than C{-t} seconds
(default 3600, 0 = never) or whose holder has died is taken over.  The holder renews its
lock's time while COMMAND runs (L{renewEvery}), so a long COMMAND keeps it and only a holder
that hangs itself or vanished without cleaning up loses it: a COMMAND that hangs keeps its
lock until something kills it (in a C{.qmail} line, the delivery's program timeout).  Exits with COMMAND's
status, so its 0/99/100/111 keep their meaning for qmail-local; COMMAND killed or qmlock's
own trouble is 111, usage 100.

The lock is the file C{.qmlock/NAME} (relative to the working directory, the home for
delivery programs; a NAME with C{/} is used as a path) holding C{pid time}; every decision
about it is made under an exclusive flock on C{NAME.guard}, so two waiters can never both
take over a stale lock.  Writes only those two files.
"""

import fcntl
import getopt
import os
import subprocess
import sys
import threading
import time

from qmailtx.dotqmail import errorStr
from qmailtx.users import isTemporaryErrno

USAGE = "qmlock: usage: qmailtx qmlock [-v] [-r SECS] [-t SECS] NAME COMMAND [ARGS...]\n"
LOCK_DIR = ".qmlock"
RENEW_LIMIT = 60.0
"""Most seconds between two renewals of a held lock."""


def renewEvery(staleAfter):
    """Seconds between renewals: well inside C{-t}, so a waiter never sees a live lock
    stale; C{None} when locks never go stale (C{-t 0})."""
    return min(RENEW_LIMIT, staleAfter / 3) if staleAfter else None


class Lock:
    """One NAME's lock file and guard, with an injectable clock and sleep for tests."""

    def __init__(self, path, staleAfter, clock=time.time, say=None):
        self.path = path
        self.guard = path + ".guard"
        self.staleAfter = staleAfter
        self.clock = clock
        self.say = say or (lambda text: None)
        self.token = b"%d %d\n" % (os.getpid(), int(clock()))

    def _holder(self):
        """C{(pid, age)} of the current lock, or C{None} if there is none."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(64)
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        fields = data.split()
        pid = int(fields[0]) if fields and fields[0].isdigit() else 0
        return pid, self.clock() - mtime

    def _alive(self, pid):
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def tryAcquire(self):
        """Take the lock if it is free or stale; C{True} on success."""
        guardFd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(guardFd, fcntl.LOCK_EX)
            holder = self._holder()
            if holder is not None:
                pid, age = holder
                stale = self.staleAfter and age > self.staleAfter
                if not stale and self._alive(pid):
                    self.say(f"waiting for {self.path} (held by pid {pid})")
                    return False
                self.say(f"taking over {'stale' if stale else 'abandoned'} lock {self.path}")
            tmp = self.path + ".%d" % os.getpid()
            with open(tmp, "wb") as f:
                f.write(self.token)
            os.rename(tmp, self.path)
            return True
        finally:
            os.close(guardFd)

    def renew(self):
        """Set the lock's time to now, if it is still ours."""
        self._whileOurs(lambda: os.utime(self.path))

    def release(self):
        """Remove the lock if it is still ours (it may have been taken over)."""
        self._whileOurs(lambda: os.unlink(self.path))

    def _whileOurs(self, act):
        guardFd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(guardFd, fcntl.LOCK_EX)
            try:
                with open(self.path, "rb") as f:
                    if f.read(64) == self.token:
                        act()
            except FileNotFoundError:
                pass
        finally:
            os.close(guardFd)


def waitRenewing(proc, lock, every):
    """
    C{proc}'s status, renewing C{lock} every C{every} seconds meanwhile from a thread, so
    that the wait itself blocks in waitpid (a wait with a timeout polls every 50 ms).
    """
    if every is None:
        return proc.wait()
    done = threading.Event()

    def renew():
        while not done.wait(every):
            try:
                lock.renew()
            except OSError:
                pass
    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        return proc.wait()
    finally:
        done.set()
        renewer.join()


def lockPath(name):
    if "/" in name:
        return name
    os.makedirs(LOCK_DIR, 0o700, exist_ok=True)
    return os.path.join(LOCK_DIR, name)


def main(argv):
    try:
        opts, args = getopt.getopt(argv[1:], "vr:t:")
        options = dict(opts)
        retry = float(options.get("-r", 1))
        stale = float(options.get("-t", 3600))
    except (getopt.GetoptError, ValueError):
        args = []
    if len(args) < 2 or not args[0] or retry <= 0 or stale < 0:
        sys.stderr.write(USAGE)
        return 100
    verbose = "-v" in options

    def say(text):
        if verbose:
            sys.stderr.write("qmlock: " + text + "\n")
            sys.stderr.flush()

    name, command = args[0], args[1:]
    try:
        lock = Lock(lockPath(name), stale, say=say)
        while not lock.tryAcquire():
            time.sleep(retry)
    except OSError as e:
        sys.stderr.buffer.write(b"qmlock: fatal: unable to lock " + os.fsencode(name) + b": "
                                + errorStr(e.errno) + b"\n")
        return 111
    try:
        try:
            proc = subprocess.Popen(command, restore_signals=True)
        except OSError as e:
            sys.stderr.buffer.write(b"qmlock: fatal: unable to run " + os.fsencode(command[0])
                                    + b": " + errorStr(e.errno) + b"\n")
            return 111 if isTemporaryErrno(e.errno) else 100
        status = waitRenewing(proc, lock, renewEvery(stale))
    finally:
        try:
            lock.release()
        except OSError:
            pass
    if status < 0:
        sys.stderr.write("qmlock: fatal: child crashed\n")
        return 111
    return status
