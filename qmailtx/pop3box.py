"""
Mailbox access for the POP3 TRANSACTION state, in two privilege modes (spec/pop3.md §2).

L{LocalMailboxes}: the daemon is unprivileged and serves maildirs itself; scans and the
QUIT update run in the reactor's thread pool so a 50,000-message maildir never blocks other
sessions.  L{OwnerMailboxes}: the daemon is root; every read and change is made by a
L{qmailtx.scripts.pop3session} worker running as the mailbox owner's uid/gid, spoken to over
pipes.  Workers are kept per (uid, gid) while in use and for a while after, so their scan
caches make repeated logins cheap.

Both hand L{qmailtx.pop3} a mailbox with C{messages}, C{openMessage(name)},
C{update(deleted, kept)} and C{release()}.  Writes only through L{qmailtx.maildirscan}; must
not import protocols.
"""

import os
import sys

from twisted.internet import defer, error, protocol, threads
from twisted.logger import Logger

from qmailtx import maildirscan
from qmailtx.children import killChild
from qmailtx.scripts import pop3session as wire

_log = Logger(namespace="qmailtx.pop3")


def maildirPath(home, maildirName):
    """C{$HOME/<maildirName>}; an empty home has no maildir."""
    if not home:
        raise maildirscan.NoMaildir()
    return os.path.join(home, maildirName)


class _FileSource:
    """A message file read in this process (chunks come from the page cache)."""

    def __init__(self, f):
        self.f = f

    def read(self, n):
        try:
            return defer.succeed(self.f.read(n))
        except OSError as e:
            return defer.fail(e)

    def close(self):
        self.f.close()


class LocalMailbox:
    def __init__(self, reactor, box, messages):
        self.reactor = reactor
        self.box = box
        self.messages = messages

    def openMessage(self, name):
        try:
            return defer.succeed(_FileSource(self.box.open(name)))
        except OSError as e:
            return defer.fail(e)

    def update(self, deleted, kept):
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         self.box.update, deleted, kept)

    def release(self):
        pass


class LocalMailboxes:
    """Maildirs served by the daemon's own uid, with one scan cache for all of them."""

    def __init__(self, reactor, cache=None):
        self.reactor = reactor
        self.cache = cache if cache is not None else maildirscan.ScanCache()

    def open(self, who, maildirName):
        try:
            box = maildirscan.Maildir(maildirPath(who.home, maildirName), self.cache,
                                      self.reactor.seconds)
        except maildirscan.NoMaildir as e:
            return defer.fail(e)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), box.login)
        d.addCallback(lambda messages: LocalMailbox(self.reactor, box, messages))
        return d


def _worldExecutable(path):
    """True if a user other than us can run C{path}: every directory on the way and the
    file itself have the others-execute bit."""
    path = os.path.realpath(path)
    parts = [path]
    while os.path.dirname(parts[-1]) != parts[-1]:
        parts.append(os.path.dirname(parts[-1]))
    try:
        return all(os.stat(p).st_mode & 0o001 for p in parts)
    except OSError:
        return False


def workerCommand():
    """
    How to start L{qmailtx.scripts.pop3session} as a mailbox owner: this interpreter if the
    owner can run it, else the system's C{python3} (the worker needs only the standard
    library and qmailtx itself).
    """
    python = sys.executable
    if not _worldExecutable(python):
        python = "/usr/bin/python3"
    return [python, "-s", "-m", "qmailtx.scripts.pop3session"]


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(maildirscan.__file__)))


OPEN_CHUNK = 65536
"""Bytes of a message sent with the open reply: small messages take one round trip."""

LISTING_CACHE = 64
"""Maildir listings the daemon keeps, so an unchanged 50,000-message listing is not resent."""

STDERR_LOGGED = 1000
"""Bytes of one piece of a worker's stderr that are logged: its start and its end."""

WORKER_IDLE = 300.0
"""Seconds an unused owner worker is kept, so its scan cache serves the next login."""


class _WorkerProtocol(protocol.ProcessProtocol):
    """Requests out on the worker's stdin, replies in order on its stdout."""

    def __init__(self, pool, key):
        self.pool = pool
        self.key = key
        self.pending = []
        self.decoder = wire.FrameDecoder()
        self.users = 0
        self.idleCall = None
        self.dead = False
        self.ended = defer.Deferred()

    def request(self, *fields):
        if self.dead:
            return defer.fail(maildirscan.ScanError())
        d = defer.Deferred()
        self.pending.append(d)
        self.transport.write(wire.encodeFrame(fields))
        return d

    def outReceived(self, data):
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            killChild(self.transport)
            return
        for frame in frames:
            if self.pending:
                self.pending.pop(0).callback(frame)

    def errReceived(self, data):
        # A traceback names its cause last: keep the tail when it is long.
        if len(data) > STDERR_LOGGED:
            data = data[:STDERR_LOGGED // 2] + b"\n...\n" + data[-(STDERR_LOGGED // 2):]
        _log.warn("pop3session: {text}", text=data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.dead = True
        self.pool.forget(self)
        self.pool.live.discard(self)
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(maildirscan.ScanError())
        self.ended.callback(None)

    def hold(self):
        self.users += 1
        if self.idleCall is not None:
            self.idleCall.cancel()
            self.idleCall = None

    def unhold(self):
        self.users -= 1
        if self.users == 0 and not self.dead:
            self.idleCall = self.pool.reactor.callLater(self.pool.idle, self._stop)

    def _stop(self):
        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        self.idleCall = None
        self.pool.forget(self)
        try:
            self.transport.closeStdin()
        except error.ProcessExitedAlready:
            pass


class _WorkerSource:
    """A message file open in the worker; the first chunk came with the open reply."""

    def __init__(self, worker, handle, first):
        self.worker = worker
        self.handle = handle
        self.first = first

    def read(self, n):
        if self.first is not None:
            first, self.first = self.first, None
            return defer.succeed(first)
        if not self.handle:
            return defer.succeed(b"")
        d = self.worker.request(b"R", self.handle, b"%d" % n)
        d.addCallback(_expectOk)
        return d

    def close(self):
        if self.handle and not self.worker.dead:
            self.worker.request(b"C", self.handle).addErrback(lambda f: None)
        self.handle = b""


def _expectOk(frame):
    if frame[:1] != b"+":
        raise OSError(frame[1:].decode("utf-8", "replace"))
    return frame[1:]


class OwnerMailbox:
    def __init__(self, worker, path, messages):
        self.worker = worker
        self.path = path
        self.messages = messages

    def openMessage(self, name):
        d = self.worker.request(b"O", self.path, name, b"%d" % OPEN_CHUNK)
        d.addCallback(_expectOk)
        d.addCallback(self._cbOpened)
        return d

    def _cbOpened(self, reply):
        handle, _, first = reply.partition(b"\0")
        return _WorkerSource(self.worker, handle, first)

    def update(self, deleted, kept):
        d = self.worker.request(b"U", self.path, b"\0".join(deleted), b"\0".join(kept))
        d.addCallback(_expectOk)
        d.addCallback(int)
        return d

    def release(self):
        if self.worker is not None:
            self.worker.unhold()
            self.worker = None


class OwnerMailboxes:
    """
    Maildirs served by workers running as their owners (daemon started as root).

    @ivar command: argv of the worker (default: this Python running
        L{qmailtx.scripts.pop3session}).
    """

    def __init__(self, reactor, idle=WORKER_IDLE, command=None):
        self.reactor = reactor
        self.idle = idle
        self.command = command or workerCommand()
        self.workers = {}
        self.live = set()
        self.listings = {}

    def worker(self, uid, gid):
        key = (uid, gid)
        w = self.workers.get(key)
        if w is None:
            if uid == 0:
                raise ValueError("no POP3 session as uid 0")
            w = _WorkerProtocol(self, key)
            env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": PACKAGE_ROOT}
            # The worker switches itself (setgroups([gid]), setgid, setuid): spawnProcess's
            # uid= needs a passwd entry for the uid, and a mailbox owner need not have one.
            command = list(self.command) + ["--uid", "%d" % uid, "--gid", "%d" % gid]
            self.reactor.spawnProcess(w, command[0], command, env=env, path="/")
            self.workers[key] = w
            self.live.add(w)
        return w

    def forget(self, w):
        if self.workers.get(w.key) is w:
            del self.workers[w.key]

    def open(self, who, maildirName):
        try:
            path = maildirPath(who.home, maildirName)
            w = self.worker(who.uid, who.gid)
        except maildirscan.NoMaildir as e:
            return defer.fail(e)
        except Exception:
            return defer.fail(maildirscan.ScanError())
        w.hold()
        known = self.listings.get(path)
        d = w.request(b"L", path, known.version if known is not None else b"")
        d.addCallback(self._cbListed, w, path)
        d.addErrback(self._ebListed, w)
        return d

    def _cbListed(self, frame, w, path):
        if frame == b"-nomaildir":
            raise maildirscan.NoMaildir()
        if frame[:1] == b"=":
            listing = self.listings.get(path)
            if listing is None or listing.version != frame[1:]:
                raise maildirscan.ScanError()
        elif frame[:1] == b"+":
            version, _, data = frame[1:].partition(b"\0")
            listing = maildirscan.Listing(wire.decodeListing(data), version)
            self.listings.pop(path, None)
            if len(self.listings) >= LISTING_CACHE:
                del self.listings[next(iter(self.listings))]
            self.listings[path] = listing
        else:
            raise maildirscan.ScanError()
        return OwnerMailbox(w, path, listing)

    def _ebListed(self, failure, w):
        w.unhold()
        return failure

    def stopAll(self):
        """Ask every worker to exit; the L{Deferred} fires when all have."""
        ended = []
        for w in list(self.live):
            ended.append(w.ended)
            w._stop()
        return defer.DeferredList(ended)
