"""
The local spawner's two cheap paths (L{qmailtx.lspawn}): passwd answers remembered for
L{qmailtx.lspawn.PASSWD_TTL} seconds on a fake clock while the passwd file is unchanged, and C{deliverworker --fdsock}
taking each request and the message's descriptor in one socket message, ending at EOF on
the socket (run as a throwaway user when we are root).
"""

import contextlib
import os
import socket
import subprocess
import sys

import pytest
from twisted.internet import task

from qmailtx import lspawn, netstring
from qmailtx.users import PasswdEntry
from tests.component.deliverhelp import Space, workerEnv

JOE = PasswdEntry(b"joe", 1234, 1234, b"/home/joe")


class Passwd:
    """A passwd double that counts its look-ups and can be told to fail."""

    def __init__(self):
        self.calls = []
        self.entries = {b"joe": JOE}
        self.trouble = False

    def __call__(self, name):
        self.calls.append(name)
        if self.trouble:
            raise OSError(5, "I/O error")
        return self.entries.get(name)


@pytest.fixture
def spawner(tmp_path):
    clock = task.Clock()
    passwd = Passwd()
    s = lspawn.LocalSpawner(str(tmp_path), clock, environ={}, getpwnam=passwd)
    return s, clock, passwd


def test_passwdAnswersAreRememberedBriefly(spawner):
    """Found and not-found answers are reused within PASSWD_TTL and asked again after it."""
    s, clock, passwd = spawner
    assert s.getpwnam(b"joe") == JOE and s.getpwnam(b"nobody-here") is None
    clock.advance(lspawn.PASSWD_TTL - 0.5)
    assert s.getpwnam(b"joe") == JOE and s.getpwnam(b"nobody-here") is None
    assert passwd.calls == [b"joe", b"nobody-here"]
    passwd.entries[b"nobody-here"] = JOE
    clock.advance(1)
    assert s.getpwnam(b"nobody-here") == JOE
    assert passwd.calls == [b"joe", b"nobody-here", b"nobody-here"]


def test_passwdTroubleIsNotRemembered(spawner):
    """A temporary passwd failure raises each time (deferral), and is not cached as absence."""
    s, clock, passwd = spawner
    passwd.trouble = True
    for _ in range(2):
        with pytest.raises(OSError):
            s.getpwnam(b"joe")
    passwd.trouble = False
    assert s.getpwnam(b"joe") == JOE
    assert passwd.calls == [b"joe"] * 3


def test_passwdCacheIsBounded(spawner):
    """Names come from recipients: the cache starts over when it reaches its limit."""
    s, clock, passwd = spawner
    for n in range(lspawn.PASSWD_CACHE_LIMIT + 1):
        s.getpwnam(b"u%d" % n)
    assert len(s._passwd) == 1


@pytest.fixture
def watched(tmp_path):
    """A spawner whose passwd file is a temporary one the test can edit."""
    clock = task.Clock()
    passwd = Passwd()
    passwdFile = tmp_path / "passwd"
    passwdFile.write_text("joe:x:1234:1234::/home/joe:/bin/sh\n")
    s = lspawn.LocalSpawner(str(tmp_path), clock, environ={}, getpwnam=passwd,
                            passwdFile=str(passwdFile))
    return s, clock, passwd, passwdFile


def test_passwdEditEndsRememberedAnswers(watched):
    """An edit of the passwd file is seen by the next look-up, before PASSWD_TTL runs out."""
    s, clock, passwd, passwdFile = watched
    assert s.getpwnam(b"joe") == JOE and s.getpwnam(b"ann") is None
    assert s.getpwnam(b"joe") == JOE and s.getpwnam(b"ann") is None
    assert passwd.calls == [b"joe", b"ann"]
    ann = PasswdEntry(b"ann", 2345, 2345, b"/home/ann")
    passwd.entries[b"ann"] = ann
    with open(passwdFile, "a") as f:
        f.write("ann:x:2345:2345::/home/ann:/bin/sh\n")
    assert s.getpwnam(b"ann") == ann
    assert passwd.calls == [b"joe", b"ann", b"ann"]


def test_passwdReplacedByRename(watched):
    """vipw and useradd replace the file by rename: a new inode of the same size counts too."""
    s, clock, passwd, passwdFile = watched
    s.getpwnam(b"joe")
    st = os.stat(passwdFile)
    fresh = passwdFile.with_name("passwd.new")
    fresh.write_bytes(passwdFile.read_bytes())
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(fresh, passwdFile)
    s.getpwnam(b"joe")
    assert passwd.calls == [b"joe", b"joe"]


def test_aliasOwnerIsAskedEachTime(watched, tmp_path, monkeypatch):
    """The alias user is the owner of alias/ now, not as it was at an earlier delivery."""
    s, clock, passwd, passwdFile = watched
    alias = tmp_path / "alias"
    alias.mkdir()
    st = os.stat(alias)
    assert s.getpwnam(b"alias") == PasswdEntry(b"alias", st.st_uid, st.st_gid,
                                               os.fsencode(alias))
    seen = []
    real = os.stat

    def stat(path, *a, **k):
        result = real(path, *a, **k)
        if os.fspath(path) == str(alias):
            seen.append(path)
            return os.stat_result((result.st_mode, result.st_ino, result.st_dev,
                                   result.st_nlink, 4242, 4343, *result[6:]))
        return result

    monkeypatch.setattr(lspawn.os, "stat", stat)
    entry = s.getpwnam(b"alias")
    monkeypatch.undo()
    assert seen and (entry.uid, entry.gid) == (4242, 4343)


@pytest.fixture
def space():
    s = Space("/tmp")
    yield s
    s.close()


def request(messPath, home, local=b"joe"):
    fields = [b"deliver", messPath, b"joe", os.fsencode(home), local, b"", b"",
              b"example.com", b"joe@example.org", b"./Maildir/"]
    return netstring.encode(netstring.encodeList(fields))


def readAnswer(stream):
    digits = b""
    while True:
        c = stream.read(1)
        assert c, "worker died"
        if c == b":":
            break
        digits += c
    report = stream.read(int(digits))
    assert stream.read(1) == b","
    return report


@contextlib.contextmanager
def socketWorker(space, root, extraEnv=None):
    """A C{deliverworker --fdsock} run as the space's user: (our socket end, the process);
    killed at the end if it is still running."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmailtx.scripts.main", "deliverworker", "--root", root,
         "--fdsock", str(theirs.fileno()), *space.workerArgs()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=workerEnv(extraEnv),
        pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        yield mine, proc
    finally:
        mine.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def sendWithMessage(mine, data, message):
    """One request and the open message file in one socket message, as the spawner sends."""
    fd = os.open(message, os.O_RDONLY)
    try:
        assert socket.send_fds(mine, [data], [fd]) == len(data)
    finally:
        os.close(fd)


def test_workerTakesRequestAndDescriptorFromItsSocket(space):
    """Each request arrives with the open message in one sendmsg (the path is only a name:
    it does not exist); a request without a descriptor gets 'unable to open message'; EOF
    on the socket ends the worker though its stdin stays open."""
    root = space.fresh("root")
    home = space.fresh("home")
    maildir = os.path.join(home, "Maildir")
    space.mkdir(maildir, 0o700)
    for sub in ("tmp", "new", "cur"):
        space.mkdir(os.path.join(maildir, sub), 0o700)
    message = space.file(os.path.join(space.fresh("m"), "mess"), b"Subject: hi\n\nbody\n")
    with socketWorker(space, root) as (mine, proc):
        for _ in range(2):
            sendWithMessage(mine, request(b"/nonexistent/queue/mess/1", home), message)
            assert readAnswer(proc.stdout) == b"Kdid 1+0+0\n"
        assert len(os.listdir(os.path.join(maildir, "new"))) == 2
        mine.sendall(request(message.encode(), home))
        assert readAnswer(proc.stdout) == b"Zqmail-spawn unable to open message. (#4.3.0)\n"
        mine.shutdown(socket.SHUT_WR)
        assert proc.wait(10) == 0


def test_workerOutlivesGroupSignalsAndLeaksNothing(space):
    """
    SIGINT, SIGTERM and SIGHUP sent to the daemon's process group leave a worker alive
    and working (the daemon closes it when its delivery is done), and the programs it
    starts get the default actions back.  The queue program of a forward inherits neither
    the spawner's socket nor the message's descriptor.
    """
    import signal

    root = space.fresh("root")
    home = space.fresh("home")
    out = os.path.join(space.fresh("out", 0o777), "seen")
    space.file(os.path.join(home, ".qmail"), b"&elsewhere@example.org\n")
    qq = space.file(os.path.join(space.fresh("bin"), "qq"),
                    b"#!/bin/sh\nls -l /proc/$$/fd/ > %s\ngrep ^SigIgn /proc/$$/status >> %s\n"
                    b"cat >/dev/null; cat <&1 >/dev/null\nexit 0\n" % (out.encode(), out.encode()),
                    0o755)
    message = space.file(os.path.join(space.fresh("m"), "mess"), b"Subject: hi\n\nbody\n")
    with socketWorker(space, root, {"QMAILQUEUE": qq}) as (mine, proc):
        # One delivery first: once it is answered, the worker's handlers are in place.
        sendWithMessage(mine, request(b"/nonexistent/queue/mess/1", home), message)
        assert readAnswer(proc.stdout).startswith(b"Kdid 0+1+0")
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            proc.send_signal(number)
        sendWithMessage(mine, request(b"/nonexistent/queue/mess/1", home), message)
        assert readAnswer(proc.stdout).startswith(b"Kdid 0+1+0")
        assert proc.poll() is None
        seen = open(out).read()
        assert "socket:" not in seen and message not in seen, seen
        ignored = int(seen.split("SigIgn:")[1].strip(), 16)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            assert not ignored & (1 << (number - 1)), seen
        mine.shutdown(socket.SHUT_WR)
        assert proc.wait(10) == 0


@pytest.mark.parametrize("buffer, expected", [
    (b"", None),
    (b"12", None),
    (b"3:abc", None),
    (b"3:abc,rest", (b"abc", b"rest")),
    (b"0:,", (b"", b"")),
])
def test_splitRequest(buffer, expected):
    """Requests are cut from the socket's byte stream only once whole."""
    from qmailtx.scripts.deliverworker import splitRequest
    assert splitRequest(buffer) == expected


@pytest.mark.parametrize("buffer", [b"x:", b"3:abcX", b"1234567890", b"99999999:"])
def test_splitRequestRefusesBadFraming(buffer):
    """Bad length syntax, a missing comma or an oversized request is an error, not a wait."""
    from qmailtx.scripts.deliverworker import splitRequest
    with pytest.raises(ValueError):
        splitRequest(buffer)


class FakeProcess:
    """The transport of a worker process: records closeStdin and signals."""

    pid = 4242

    def __init__(self):
        self.stdinClosed = False
        self.signals = []

    def closeStdin(self):
        self.stdinClosed = True

    def signalProcess(self, sig):
        self.signals.append(sig)


def busyWorker(s, key=(1234, 1234)):
    """A worker of C{s} in the middle of a delivery (its answer not yet read)."""
    from twisted.internet import defer

    from qmailtx.lspawnworker import DeliveryWorker

    mine, theirs = socket.socketpair()
    theirs.close()
    worker = DeliveryWorker(s, key, mine)
    worker.makeConnection(FakeProcess())
    worker.pending = defer.Deferred()
    s._workers.add(worker)
    return worker


def test_stopLetsBusyWorkersFinish(spawner):
    """
    At stop a busy worker is told to exit but not killed, however long its delivery takes
    (killed, it would be delivered again after the restart); the grace period before the
    kill starts at its answer.
    """
    from qmailtx.lspawnworker import KILL_GRACE
    from qmailtx.results import Delivered

    s, clock, _ = spawner
    s.startService()
    worker = busyWorker(s)
    delivery = worker.pending
    s.stopService()
    assert worker.closing and worker.transport.stdinClosed
    clock.advance(KILL_GRACE * 10)
    assert worker.transport.signals == []
    results = []
    delivery.addCallback(results.append)
    worker._answered(Delivered(b"did 1+0+0\n"))
    assert results == [Delivered(b"did 1+0+0\n")]
    clock.advance(KILL_GRACE - 1)
    assert worker.transport.signals == []
    clock.advance(2)
    assert worker.transport.signals == ["KILL"]


def test_stopEndsDeliveriesWaitingForASlot(spawner):
    """A delivery waiting for a worker slot when the spawner stops is not started: it ends
    as a deferral at once (else qmail-send, waiting for it, would never let twistd exit),
    and so does one asked for after the stop."""
    from qmailtx.lspawnworker import STOPPING

    s, clock, passwd = spawner
    s.maxWorkers = 1
    s.startService()
    busyWorker(s, key=(1, 1))
    waiting = s._acquire((2, 2))
    assert not waiting.called
    s.stopService()
    results = []
    waiting.addCallback(lambda w: w.send(b"request", "/nonexistent")).addCallback(results.append)
    assert results == [STOPPING]
    late = s._acquire((3, 3))
    late.send(b"request", "/nonexistent").addCallback(results.append)
    assert results == [STOPPING, STOPPING]
