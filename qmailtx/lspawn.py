"""
qmail-lspawn inside the daemon (spec/local.md §1, §9): the L{LocalSpawner} service.

For each local recipient it decides who delivers (L{qmailtx.users}), then hands the delivery
to a long-lived C{qmailtx deliverworker} running as that user, spoken to through a
L{qmailtx.lspawnworker.DeliveryWorker} (requests on a Unix socket, answers on its stdout).
Started as root, workers are spawned as root and drop to the mailbox owner's uid/gid
themselves (never uid 0); run as an ordinary user, every worker runs as that user and an
assignment to another uid is deferred.  Workers are reused across messages, at most
L{SPAWN} live at once, and reaped when idle.

Writes nothing itself (the workers write mailboxes); reads C{users/cdb} and
C{control/defaultdelivery}.  Must not import the queue or the network code.
"""

import os
import socket
import sys
from collections import deque

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmailtx import log, netstring
from qmailtx.lspawnworker import STOPPING, UNABLE_TO_RUN, DeliveryWorker, UnstartedWorker
from qmailtx.results import TempFailure
from qmailtx.users import (ALIAS_USER, CDB_TROUBLE, PasswdEntry, assignRecipient,
                           openUsersCdb, systemGetpwnam, systemHomeOwner)

SPAWN = 120
"""Most live workers (qmail's conf-spawn bounds simultaneous deliveries the same way)."""
IDLE_TIMEOUT = 60
"""Seconds a worker may sit unused before it is told to exit."""
WORKER_SOCKET_FD = 3
"""The worker's descriptor for the Unix socket that carries each message's open file."""
PROGRAM_TIMEOUT = 86400
"""Seconds a C{|program} line may run (qmail-local has no limit; ours kills after a day)."""
PASSWD_TTL = 2
"""Seconds a passwd answer (found or not) is reused.  qmail-getpw asks for every delivery;
asking once per burst instead keeps the reactor out of NSS (a scan of C{/etc/passwd} per
look-up).  An edit of L{PASSWD_FILE} ends every answer at once; the TTL bounds staleness
only for passwd sources NSS reads elsewhere (LDAP, a database)."""
PASSWD_FILE = "/etc/passwd"
PASSWD_CACHE_LIMIT = 1024
"""Names remembered at once (they come from recipient addresses, so the cache is bounded)."""


_log = Logger()


def readDefaultDelivery(root):
    """C{control/defaultdelivery} as LWQ's C{$(cat ...)} gives it, else C{./Mailbox}."""
    try:
        with open(os.path.join(root, "control", "defaultdelivery"), "rb") as f:
            text = f.read().rstrip(b"\n")
    except FileNotFoundError:
        return b"./Mailbox"
    return text


def wrongUser(uid, mine):
    return TempFailure(b"Unable to deliver as uid %d: qmailtx runs as uid %d, not root, "
                       b"so it delivers only to its own mailboxes. (#4.3.0)\n" % (uid, mine))


class LocalSpawner(service.Service):
    """
    The local channel: C{deliver(messPath, sender, recipient) -> Deferred(result)}, never
    failing (trouble is a L{TempFailure}).  C{sender} is already the per-delivery (VERP)
    sender.

    @param environ: the environment workers (and their programs) get; default the daemon's.
    @param getpwnam, homeOwner: passwd and home-owner look-ups (L{qmailtx.users} shapes).
    """

    name = "lspawn"

    def __init__(self, root, reactor, environ=None, maxWorkers=SPAWN, idleTimeout=IDLE_TIMEOUT,
                 programTimeout=PROGRAM_TIMEOUT, getpwnam=systemGetpwnam,
                 homeOwner=systemHomeOwner, python=None, uid=None, passwdFile=PASSWD_FILE):
        self.root = os.path.abspath(os.fsdecode(root))
        self.reactor = reactor
        self.environ = dict(os.environb if environ is None else environ)
        self.maxWorkers = maxWorkers
        self.idleTimeout = idleTimeout
        self.programTimeout = programTimeout
        self._getpwnam = getpwnam
        self._homeOwner = homeOwner
        self.python = os.fsencode(python or sys.executable)
        self.uid = os.getuid() if uid is None else uid
        self.defaultDelivery = readDefaultDelivery(self.root)
        self._cdbPath = os.path.join(self.root, "users", "cdb")
        self._cdb = (None, None)
        self._passwd = {}
        self._passwdFile = passwdFile
        self._passwdVersion = None
        self._idle = {}
        self._workers = set()
        self._waiting = deque()
        self._reaper = None
        self._allGone = None
        self._stopping = False

    def startService(self):
        service.Service.startService(self)
        self.defaultDelivery = readDefaultDelivery(self.root)
        self._reaper = LoopingCall(self.reap)
        self._reaper.clock = self.reactor
        self._reaper.start(max(1, self.idleTimeout / 2), now=False)

    def stopService(self):
        """
        Tell every worker to exit, a busy one once its delivery is done; fires when all
        have (or were killed).  A delivery still waiting for a worker slot is not started:
        it ends as a deferral, so qmail-send's wait for its running deliveries ends too.
        """
        service.Service.stopService(self)
        self._stopping = True
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        waiting, self._waiting = self._waiting, deque()
        for _, d in waiting:
            d.callback(UnstartedWorker(STOPPING))
        for worker in list(self._workers):
            worker.close()
        if not self._workers:
            return None
        self._allGone = defer.Deferred()
        return self._allGone

    # -- assignment -----------------------------------------------------------------------

    def getpwnam(self, name):
        """
        The system's passwd entry for C{name}, remembered for L{PASSWD_TTL} seconds while
        L{PASSWD_FILE} is unchanged (one C{stat} a look-up); trouble (C{OSError}) is not
        remembered.  With no such user, C{alias} is the root's C{alias/} directory, asked
        anew each time, so a change of its owner counts from the next delivery.
        """
        now = self.reactor.seconds()
        self._checkPasswdFile()
        cached = self._passwd.get(name)
        if cached is not None and cached[0] > now:
            entry = cached[1]
        else:
            entry = self._getpwnam(name)
            if len(self._passwd) >= PASSWD_CACHE_LIMIT:
                self._passwd.clear()
            self._passwd[name] = (now + PASSWD_TTL, entry)
        if entry is None and name == ALIAS_USER:
            return self._aliasEntry()
        return entry

    def _checkPasswdFile(self):
        """Forget every answer when the passwd file is not the one they were read from."""
        try:
            st = os.stat(self._passwdFile)
            version = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except OSError:
            version = None
        if version != self._passwdVersion:
            self._passwdVersion = version
            self._passwd.clear()

    def _aliasEntry(self):
        home = os.path.join(self.root, "alias")
        try:
            st = os.stat(home)
        except FileNotFoundError:
            return None
        return PasswdEntry(ALIAS_USER, st.st_uid, st.st_gid, os.fsencode(home))

    def usersCdb(self):
        """C{users/cdb}, re-read when it changes (qmail-lspawn opens it per delivery)."""
        try:
            st = os.stat(self._cdbPath)
        except FileNotFoundError:
            self._cdb = (None, None)
            return None
        except OSError:
            return CDB_TROUBLE
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cdb[0] != ident:
            self._cdb = (ident, openUsersCdb(self._cdbPath))
        return self._cdb[1]

    def deliver(self, messPath, sender, recipient):
        assigned = assignRecipient(recipient, self.usersCdb(), self.getpwnam, self._homeOwner)
        if not isinstance(assigned, tuple):
            return defer.succeed(assigned)
        a, local, domain = assigned
        if self.uid != 0 and a.uid != self.uid:
            log.warning(f"cannot deliver to {log.logsafe(recipient)} as uid {a.uid}: "
                        f"not running as root")
            return defer.succeed(wrongUser(a.uid, self.uid))
        request = netstring.encode(netstring.encodeList([
            b"deliver", os.fsencode(messPath), a.user, a.home, local, a.dash, a.ext, domain,
            sender, self.defaultDelivery]))
        worker = self._acquire((a.uid, a.gid))
        if isinstance(worker, defer.Deferred):
            return worker.addCallback(lambda w: w.send(request, messPath)).addErrback(
                self._ebDeliver)
        try:
            return worker.send(request, messPath)
        except Exception:
            return defer.succeed(self._ebDeliver(Failure()))

    def _ebDeliver(self, failure):
        _log.failure("local delivery failed", failure)
        return UNABLE_TO_RUN

    # -- the pool ---------------------------------------------------------------------------

    def _acquire(self, key):
        """A worker for C{key} at once, or a Deferred firing with one when a slot frees."""
        idle = self._idle.get(key)
        if idle:
            return idle.pop()
        if len(self._workers) >= self.maxWorkers and not self._evictIdle():
            if self._stopping:
                return UnstartedWorker(STOPPING)
            d = defer.Deferred()
            self._waiting.append((key, d))
            return d
        return self._spawnOrFail(key)

    def _evictIdle(self):
        """Close the longest-idle worker to make room; C{False} if none is idle."""
        oldest = None
        for workers in self._idle.values():
            for worker in workers:
                if oldest is None or worker.idleSince < oldest.idleSince:
                    oldest = worker
        if oldest is None:
            return False
        oldest.close()
        return True

    def _spawn(self, key):
        uid, gid = key
        args = [self.python, b"-m", b"qmailtx.scripts.main", b"deliverworker",
                b"--root", os.fsencode(self.root), b"--timeout", b"%d" % self.programTimeout,
                b"--fdsock", b"%d" % WORKER_SOCKET_FD]
        if self.uid == 0:
            args += [b"--uid", b"%d" % uid, b"--gid", b"%d" % gid]
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        worker = DeliveryWorker(self, key, mine)
        try:
            self.reactor.spawnProcess(worker, self.python, args, env=self.environ,
                                      path=self.root,
                                      childFDs={0: "w", 1: "r", 2: "r",
                                                WORKER_SOCKET_FD: theirs.fileno()})
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._workers.add(worker)
        return worker

    def release(self, worker):
        """A worker finished a request: give it to a waiter, or keep it idle."""
        worker.idleSince = self.reactor.seconds()
        for i, (key, d) in enumerate(self._waiting):
            if key == worker.key:
                del self._waiting[i]
                d.callback(worker)
                return
        if self._waiting and self.running:
            worker.close()
            return
        if not self.running:
            worker.close()
            return
        self._idle.setdefault(worker.key, []).append(worker)

    def _spawnOrFail(self, key):
        try:
            return self._spawn(key)
        except OSError:
            return UnstartedWorker()

    def forget(self, worker):
        """A worker process ended."""
        self._workers.discard(worker)
        idle = self._idle.get(worker.key)
        if idle and worker in idle:
            idle.remove(worker)
        if self._waiting and self.running and len(self._workers) < self.maxWorkers:
            key, d = self._waiting.popleft()
            d.callback(self._spawnOrFail(key))
        if not self._workers and self._allGone is not None:
            d, self._allGone = self._allGone, None
            d.callback(None)

    def reap(self):
        """Close workers idle for longer than C{idleTimeout}."""
        limit = self.reactor.seconds() - self.idleTimeout
        for key, workers in list(self._idle.items()):
            for worker in list(workers):
                if worker.idleSince <= limit:
                    worker.close()

    def workerCount(self):
        return len(self._workers)

