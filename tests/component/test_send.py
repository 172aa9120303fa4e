"""
qmail-send (L{qmailtx.send.Sender}) on a real queue directory, with a fake clock, file work
run inline, and stand-in local/remote channels: preprocessing, scheduling, retries,
queuelifetime, bounces, restart recovery and the log lines.
"""

import os
import re
import time

import pytest
from twisted.internet import defer, task

from qmailtx import sendfinish, sendqueue
from qmailtx.control import ControlDir
from qmailtx.queue import Queue
from qmailtx.results import Delivered, PermFailure, StartRefused, TempFailure
from qmailtx.send import Sender
from qmailtx.sendtodo import SCAN_INTERVAL, TODO_BATCH, TODO_GATHER


def inline(f, *args):
    return defer.maybeDeferred(f, *args)


class Channel:
    """A local or remote channel that records calls and answers from a script."""

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer or (lambda *a: Delivered(b"did 1+0+0\n"))
        self.held = []

    def deliver(self, *args):
        self.calls.append(args)
        result = self.answer(*args)
        if result == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(result)


class Remote(Channel):
    def deliver(self, host, sender, recipients, messPath):
        self.calls.append((host, sender, list(recipients), messPath))
        results = [self.answer(r) for r in recipients]
        if "hold" in results:
            d = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(results)


@pytest.fixture
def lines(qmailLines):
    return qmailLines


class World:
    """A root, a clock at the real time, a queue, and a sender built on demand."""

    def __init__(self, root):
        self.root = str(root)
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.queue = Queue(self.root, self.clock, runBlocking=inline)
        self.controls = ControlDir(os.path.join(self.root, "control"))
        self.local = Channel()
        self.remote = Remote()
        self.sender = None

    def control(self, name, text):
        with open(os.path.join(self.root, "control", name), "wb") as f:
            f.write(text)

    def start(self):
        self.sender = Sender(self.queue, self.controls, self.clock, self.local, self.remote,
                             runBlocking=inline)
        self.sender.startService()
        return self.sender

    def stop(self):
        d = self.sender.stopService()
        self.queue._observers.clear()
        return d

    def inject(self, sender, recipients, body=b"Subject: t\n\nhello\n", how=b"from network"):
        writer = self.queue.begin(how)
        writer.write(body)
        msgid = writer.commitSync(sender, recipients)
        self.gathered()
        return msgid

    def gathered(self):
        """Let announced todo/ entries be preprocessed: qmail-send waits TODO_GATHER."""
        if self.sender is not None:
            self.clock.advance(TODO_GATHER)

    def files(self, kind):
        top = os.path.join(self.queue.queueDir, kind)
        out = []
        for dirpath, _, names in os.walk(top):
            out += [int(n) for n in names if n.isdigit()]
        return sorted(out)

    def read(self, kind, msgid):
        with open(sendqueue.path(self.queue.queueDir, kind, msgid), "rb") as f:
            return f.read()

    def messages(self):
        """Every message in mess/: (msgid, contents)."""
        return [(m, self.read("mess", m)) for m in self.files("mess")]

    def advanceTo(self, when):
        self.clock.advance(max(0, when - self.clock.seconds()))


@pytest.fixture
def world(qmailRoot):
    w = World(qmailRoot)
    yield w
    if w.sender is not None and w.sender.running:
        w.stop()


def test_preprocessAndDeliver(world, lines):
    """todo/ becomes info+local+remote (rewritten), both channels deliver, the message is removed;
    the log starts with a status line, as qmail-send's del_init() writes one."""
    world.start()
    msgid = world.inject(b"joe@example.org", [b"Postmaster@MX.example.com", b"bob@elsewhere.org",
                                              b"nohost"])
    assert world.local.calls[0][1:] == (b"joe@example.org", b"Postmaster@MX.example.com")
    assert world.local.calls[1][1:] == (b"joe@example.org", b"nohost@mx.example.com")
    assert world.remote.calls == [(b"elsewhere.org", b"joe@example.org", [b"bob@elsewhere.org"],
                                   sendqueue.path(world.queue.queueDir, "mess", msgid))]
    for kind in ("todo", "intd", "info", "local", "remote", "mess"):
        assert world.files(kind) == [], kind
    assert lines[0] == "status: local 0/10 remote 0/20"
    assert lines[1] == f"new msg {msgid}"
    assert re.fullmatch(rf"info msg {msgid}: bytes \d+ from <joe@example.org> qp \d+ uid "
                        rf"{os.getuid()}", lines[2])
    assert f"starting delivery 1: msg {msgid} to local Postmaster@MX.example.com" in lines
    assert "delivery 1: success: did_1+0+0/" in lines
    assert "status: local 1/10 remote 0/20" in lines
    assert lines[-1] == f"end msg {msgid}"


def test_preprocessedFilesOnDisk(world):
    """Before delivery: info holds F<sender>, local/remote hold T records, todo/intd are gone."""
    world.control("concurrencylocal", b"0\n")
    world.control("concurrencyremote", b"0\n")
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost", b"b@x.org", b"c@localhost"])
    assert world.read("info", msgid) == b"Fjoe@example.org\0"
    assert world.read("local", msgid) == b"Ta@localhost\0Tc@localhost\0"
    assert world.read("remote", msgid) == b"Tb@x.org\0"
    assert world.files("todo") == [] and world.files("intd") == []
    assert world.local.calls == [] and world.remote.calls == []


def test_messageQueuedByQmailItself(world):
    """
    A message left in todo/ by qmail's own qmail-queue (its steps done by hand here: a pid/
    file linked to mess/<inode % 23>/<inode>, intd/ written and linked to todo/) is taken
    at start-up like ours, so an existing qmail queue carries over.
    """
    world.control("concurrencylocal", b"0\n")
    world.control("concurrencyremote", b"0\n")
    queueDir = world.queue.queueDir
    pidPath = os.path.join(queueDir, "pid", "4242")
    with open(pidPath, "wb") as f:
        f.write(b"Received: (qmail 4242 invoked by uid 1000); 1 Jan 2026 00:00:00 -0000\n"
                b"Subject: from qmail\n\nhello\n")
    msgid = os.stat(pidPath).st_ino
    os.link(pidPath, os.path.join(queueDir, "mess", str(msgid % 23), str(msgid)))
    os.unlink(pidPath)
    intd = os.path.join(queueDir, "intd", str(msgid))
    with open(intd, "wb") as f:
        f.write(b"u1000\0p4242\0Fjoe@example.org\0Ta@localhost\0Tb@x.org\0\0")
    os.link(intd, os.path.join(queueDir, "todo", str(msgid)))
    world.start()
    world.gathered()
    assert world.read("info", msgid) == b"Fjoe@example.org\0"
    assert world.read("local", msgid) == b"Ta@localhost\0"
    assert world.read("remote", msgid) == b"Tb@x.org\0"
    assert world.files("todo") == [] and world.files("intd") == []


def test_localRetrySchedule(world, lines):
    """A local deferral is retried at birth+100 s, then birth+400 s, not earlier."""
    world.local.answer = lambda *a: TempFailure(b"try later\n")
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost"])
    birth = world.sender.jobs[msgid].birth
    assert len(world.local.calls) == 1
    world.advanceTo(birth + 99)
    assert len(world.local.calls) == 1
    world.advanceTo(birth + 100)
    assert len(world.local.calls) == 2
    world.advanceTo(birth + 399)
    assert len(world.local.calls) == 2
    world.advanceTo(birth + 400)
    assert len(world.local.calls) == 3
    assert "delivery 1: deferral: try_later/" in lines
    assert world.files("local") == [msgid]


def test_remoteRetrySchedule(world):
    """A remote deferral is retried at birth+400 s (C=20)."""
    world.remote.answer = lambda r: TempFailure(b"no\n")
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@x.org"])
    birth = world.sender.jobs[msgid].birth
    world.advanceTo(birth + 399)
    assert len(world.remote.calls) == 1
    world.advanceTo(birth + 400)
    assert len(world.remote.calls) == 2


def test_queuelifetimeBounces(world, lines):
    """After queuelifetime the next attempt's deferral becomes a failure and a bounce."""
    world.control("queuelifetime", b"1000\n")
    world.local.answer = lambda m, s, r: (TempFailure(b"mailbox busy\n")
                                          if r == b"a@localhost" else "hold")
    world.start()
    msgid = world.inject(b"joe@localhost", [b"a@localhost"])
    birth = world.sender.jobs[msgid].birth
    for when in (100, 400, 900):
        world.advanceTo(birth + when)
    assert len(world.local.calls) == 4
    world.advanceTo(birth + 1599)
    assert len(world.local.calls) == 4
    world.advanceTo(birth + 1600)
    assert len(world.local.calls) == 6  # the last try, then the bounce to joe@localhost
    assert any("failure: mailbox_busy/I'm_not_going_to_try_again;" in l for l in lines)
    [(bounceId, bounce)] = world.messages()
    assert b"<a@localhost>:\nmailbox busy\nI'm not going to try again; this message has been " \
           b"in the queue too long.\n\n" in bounce
    assert world.local.calls[-1][2] == b"joe@localhost"


def test_bounceMessage(world, lines):
    """A permanent failure bounces to the sender with qmail's text and the original attached."""
    world.control("bouncehost", b"bh.example.com\n")
    world.local.answer = (lambda m, s, r: PermFailure(b"Sorry, no mailbox here by that name. "
                                                      b"(#5.1.1)\n")
                          if r == b"bad@localhost" else "hold")
    world.start()
    msgid = world.inject(b"joe@localhost", [b"bad@localhost"], body=b"Subject: orig\n\nbody\n")
    [(bounceId, bounce)] = world.messages()
    assert bounceId != msgid
    head, rest = bounce.split(b"\n", 1)
    assert head.startswith(b"Received: (qmail ") and b" invoked for bounce); " in head
    assert re.match(rb"Date: \d+ [A-Z][a-z][a-z] \d{4} \d\d:\d\d:\d\d -0000\n", rest)
    expected = (b"From: MAILER-DAEMON@bh.example.com\n"
                b"To: joe@localhost\n"
                b"Subject: failure notice\n\n"
                b"Hi. This is the qmail-send program at bh.example.com.\n"
                b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
                b"<bad@localhost>:\n"
                b"Sorry, no mailbox here by that name. (#5.1.1)\n\n"
                b"--- Below this line is a copy of the message.\n\n"
                b"Return-Path: <joe@localhost>\n"
                b"Received: (qmail ")
    body = rest.split(b"\n", 1)[1]
    assert body.startswith(expected)
    assert re.search(rb"\nReceived: \(qmail \d+ invoked from network\); [^\n]+\n"
                     rb"Subject: orig\n\nbody\n$", body)
    assert f"bounce msg {msgid} qp " in "\n".join(lines)
    assert "delivery 1: failure: Sorry,_no_mailbox_here_by_that_name._(#5.1.1)/" in lines
    assert world.local.calls[-1][1:] == (b"", b"joe@localhost")


def test_doubleAndTripleBounce(world, lines):
    """A bounce that bounces goes to doublebounceto@doublebouncehost from #@[]; a third is discarded."""
    world.control("doublebounceto", b"dbl\n")
    world.control("doublebouncehost", b"dbh.example\n")
    world.local.answer = lambda m, s, r: PermFailure(b"no\n") if r != b"dbl@localhost" else "hold"
    world.remote.answer = lambda r: "hold"
    world.start()
    world.inject(b"", [b"bad@localhost"])
    assert world.remote.calls[0][:3] == (b"dbh.example", b"#@[]", [b"dbl@dbh.example"])
    [(_, bounce)] = world.messages()
    world.remote.held[0].callback([PermFailure(b"remote says no\n")])
    assert b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n" \
        b"<bad@localhost>:\nno\n\n--- Below this line is the original bounce.\n\n" \
        b"Return-Path: <>\n" in bounce
    assert any(l.startswith("triple bounce: discarding bounce/") for l in lines)
    assert world.messages() == []
    assert world.files("bounce") == []


def test_verpSenderPerDelivery(world):
    """A sender ending in -@[] becomes prefix+box=dom@host for each recipient; bounces go to its plain form."""
    world.local.answer = lambda m, s, r: PermFailure(b"no\n") if r == b"x@localhost" else \
        Delivered(b"")
    world.start()
    world.inject(b"list-owner-@localhost-@[]", [b"joe@localhost", b"x@localhost"])
    senders = [c[1] for c in world.local.calls[:2]]
    assert senders == [b"list-owner-joe=localhost@localhost", b"list-owner-x=localhost@localhost"]
    assert world.local.calls[2][2] == b"list-owner-@localhost"


def test_concurrencyAndMarks(world):
    """concurrencylocal bounds running deliveries; finished records of a file are marked D."""
    world.control("concurrencylocal", b"2\n")
    world.local.answer = lambda *a: "hold"
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost", b"b@localhost", b"c@localhost"])
    assert len(world.local.calls) == 2
    world.local.held[0].callback(Delivered(b""))
    assert len(world.local.calls) == 3
    assert world.read("local", msgid) == b"Da@localhost\0Tb@localhost\0Tc@localhost\0"
    assert world.sender.statusText() == "local 2/2 remote 0/20"
    world.local.held[1].callback(TempFailure(b"later\n"))
    world.local.held[2].callback(Delivered(b""))
    assert world.read("local", msgid) == b"Da@localhost\0Tb@localhost\0Dc@localhost\0"
    birth = world.sender.jobs[msgid].birth
    world.local.answer = lambda *a: Delivered(b"")
    world.advanceTo(birth + 100)
    assert world.local.calls[-1][2] == b"b@localhost"
    assert world.files("mess") == []


def test_remoteBatching(world):
    """Recipients of one message on one host go in one remote call; other hosts get their own."""
    world.start()
    world.inject(b"joe@example.org", [b"a@x.org", b"b@y.org", b"c@X.org"])
    assert sorted((c[0], c[2]) for c in world.remote.calls) == [
        (b"x.org", [b"a@x.org", b"c@X.org"]), (b"y.org", [b"b@y.org"])]


def test_restartRecovery(world, lines):
    """On start: leftover todo/ is preprocessed afresh, preprocessed messages are delivered."""
    world.control("concurrencylocal", b"0\n")
    world.start()
    first = world.inject(b"joe@example.org", [b"a@localhost"])
    world.stop()
    # A crash between todo/ and preprocessing: todo/ present, with a stale info file.
    world.queue._observers.clear()
    second = world.inject(b"joe@example.org", [b"b@localhost"])
    with open(sendqueue.path(world.queue.queueDir, "info", second), "wb") as f:
        f.write(b"Fstale\0")
    os.unlink(os.path.join(world.root, "control", "concurrencylocal"))
    world.start()
    assert sorted(c[2] for c in world.local.calls) == [b"a@localhost", b"b@localhost"]
    assert world.files("mess") == []
    assert f"end msg {first}" in lines and f"end msg {second}" in lines


def test_schedulePersistedOnStop(world, lines):
    """SIGTERM: the next attempt becomes the channel file's mtime, and status: exiting is logged."""
    world.local.answer = lambda *a: TempFailure(b"later\n")
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost"])
    birth = world.sender.jobs[msgid].birth
    world.stop()
    mtime = os.stat(sendqueue.path(world.queue.queueDir, "local", msgid)).st_mtime
    assert mtime == pytest.approx(birth + 100, abs=1)
    assert lines[-1] == "status: exiting"
    world.local.answer = lambda *a: Delivered(b"")
    world.start()
    assert len(world.local.calls) == 1
    world.advanceTo(mtime)
    assert len(world.local.calls) == 2


def test_flushRetriesNow(world):
    """SIGALRM (flush): a deferred message is tried again at once."""
    world.local.answer = lambda *a: TempFailure(b"later\n")
    world.start()
    world.inject(b"joe@example.org", [b"a@localhost"])
    world.sender.flush()
    assert len(world.local.calls) == 2


def test_flushBeforeTheQueueIsLoaded(world):
    """A SIGALRM that comes while qmail-send is still reading the queue at start is not
    lost: once the queue is loaded, the deferred message is tried at once."""
    world.local.answer = lambda *a: TempFailure(b"later\n")
    world.start()
    world.inject(b"joe@example.org", [b"a@localhost"])
    world.stop()
    held = []

    def holdTheLoad(f, *args):
        if f is sendqueue.loadQueue:
            d = defer.Deferred()
            held.append((d, f, args))
            return d
        return inline(f, *args)

    world.sender = Sender(world.queue, world.controls, world.clock, world.local, world.remote,
                          runBlocking=holdTheLoad)
    world.sender.startService()
    world.sender.flush()
    assert len(world.local.calls) == 1
    (d, f, args), = held
    d.callback(f(*args))
    assert len(world.local.calls) == 2


def test_todoTroubleIsRetriedSoon(world, lines, monkeypatch):
    """A flush that fails while preprocessing (a flusher that died, a disk error) leaves the
    entry in todo/ and looks again TODO_RETRY seconds on, not at the 25-minute scan."""
    from qmailtx import sendtodo

    real = sendtodo.syncFiles
    failures = [OSError(5, "flusher gone")]

    def failOnce(*args):
        if failures:
            raise failures.pop()
        return real(*args)
    monkeypatch.setattr(sendtodo, "syncFiles", failOnce)
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost"])
    assert f"warning: trouble with todo/{msgid}: flusher gone; will try later" in lines
    assert world.files("todo") == [msgid] and world.local.calls == []
    world.clock.advance(sendtodo.TODO_RETRY - 1)
    assert world.local.calls == []
    world.clock.advance(1)
    world.gathered()
    assert len(world.local.calls) == 1 and world.files("todo") == []


def test_pauseAndResume(world):
    """ctl pause stops new deliveries; cont starts them again."""
    world.start()
    world.sender.pause()
    world.inject(b"joe@example.org", [b"a@localhost"])
    assert world.local.calls == []
    world.sender.resume()
    assert len(world.local.calls) == 1


def test_reloadLocals(world):
    """SIGHUP re-reads locals and virtualdomains for messages preprocessed afterwards."""
    world.control("concurrencyremote", b"0\n")
    world.start()
    world.inject(b"joe@example.org", [b"a@new.example"])
    world.control("locals", b"new.example\n")
    world.control("virtualdomains", b"virt.example:joe\n")
    world.sender.reload()
    world.inject(b"joe@example.org", [b"a@new.example", b"info@virt.example"])
    assert [c[2] for c in world.local.calls] == [b"a@new.example", b"joe-info@virt.example"]


def test_virtualPrependStrippedInBounce(world):
    """A bounce names a virtual-domain recipient without its prepend."""
    world.control("virtualdomains", b"virt.example:joe\n")
    world.local.answer = lambda m, s, r: PermFailure(b"no\n") if r.startswith(b"joe-") \
        else "hold"
    world.start()
    world.inject(b"sender@localhost", [b"info@virt.example"])
    [(_, bounce)] = world.messages()
    assert b"\n<info@virt.example>:\nno\n\n" in bounce


def announce(world, n):
    """Commit n messages with nobody listening, then tell qmail-send of them at once."""
    observers, world.queue._observers = world.queue._observers, []
    msgids = [world.inject(b"joe@example.org", [b"a@localhost"]) for _ in range(n)]
    world.queue._observers = observers
    world.sender.todoArrived(msgids)
    return msgids


def test_announcedTodoGathersBriefly(world):
    """qmail-send lets a few announced todo/ entries gather for TODO_GATHER seconds before
    preprocessing them, so a burst costs one flush; a full batch goes at once."""
    world.control("concurrencylocal", b"0\n")
    world.start()
    few = announce(world, 3)
    assert sorted(world.files("todo")) == sorted(few) and world.files("info") == []
    world.clock.advance(TODO_GATHER / 2)
    assert world.files("info") == []
    world.clock.advance(TODO_GATHER / 2)
    assert world.files("todo") == [] and sorted(world.files("info")) == sorted(few)
    many = announce(world, TODO_BATCH)
    assert world.files("todo") == [] and len(world.files("info")) == len(few) + len(many)


def test_todoWithoutTriggerIsFoundByThePeriodicScan(world):
    """A todo/ entry nobody announced (an outside qmail-queue whose trigger was lost) is
    picked up by the scan qmail-send makes every SCAN_INTERVAL seconds, not before."""
    world.control("concurrencylocal", b"0\n")
    world.control("concurrencyremote", b"0\n")
    world.start()
    outside = Queue(world.root, world.clock, runBlocking=inline)
    writer = outside.begin(b"by uid 0")
    writer.write(b"Subject: t\n\nhello\n")
    msgid = writer.commitSync(b"a@b.example", [b"joe@example.com"])
    world.clock.advance(SCAN_INTERVAL - 1)
    assert world.files("todo") == [msgid] and world.files("info") == []
    world.clock.advance(1)
    world.gathered()
    assert world.files("todo") == [] and world.files("info") == [msgid]


def test_stopCancelsTheGathering(world):
    """Stopping qmail-send while todo/ entries gather leaves no timer behind: they stay in
    todo/ for the next start."""
    world.control("concurrencylocal", b"0\n")
    world.start()
    msgids = announce(world, 2)
    world.stop()
    assert world.clock.getDelayedCalls() == []
    assert sorted(world.files("todo")) == sorted(msgids)


def test_messagesQueuedAfterStopPullTheTrigger(world):
    """A stopping daemon still finishes the commits its listeners have in flight; once
    qmail-send has stopped, those messages pull lock/trigger, so the qmail-send that runs
    next (perhaps a new daemon's, up already) takes them at once, not at its next scan."""
    world.start()
    world.sender.stopService()
    assert world.queue._observers == []
    trigger = os.open(os.path.join(world.queue.queueDir, "lock", "trigger"),
                      os.O_RDONLY | os.O_NONBLOCK)
    try:
        world.inject(b"joe@example.org", [b"a@localhost"])
        assert os.read(trigger, 10) == b"\0"
    finally:
        os.close(trigger)


def test_unknownRecordLeftInTodo(world, lines):
    """A todo file with an unknown record is left for later with qmail's warning."""
    world.control("concurrencylocal", b"0\n")
    world.start()
    world.queue._observers.clear()
    msgid = world.inject(b"joe@example.org", [b"a@localhost"])
    with open(os.path.join(world.queue.queueDir, "todo", str(msgid)), "ab") as f:
        f.write(b"Xodd\0")
    world.sender.todoArrived([msgid])
    world.gathered()
    assert f"warning: unknown record type in todo/{msgid}" in lines
    assert world.files("todo") == [msgid]


def test_secondSenderRefuses(world, lines):
    """A second qmail-send on the same queue refuses to start."""
    world.start()
    other = Sender(world.queue, world.controls, world.clock, Channel(), Remote(),
                   runBlocking=inline)
    other.startService()
    assert "alert: cannot start: qmail-send is already running" in lines
    assert other.lanes == {}


def test_secondSenderRefusesBeforeListeners(world, lines):
    """Under twistd the refusal comes from privilegedStartService, before any listener
    binds, as an exception: stopping a reactor that is not running yet would do nothing."""
    world.start()
    other = Sender(world.queue, world.controls, world.clock, Channel(), Remote(),
                   runBlocking=inline)
    with pytest.raises(StartRefused):
        other.privilegedStartService()
    assert "alert: cannot start: qmail-send is already running" in lines
    assert other.config is None


def test_unreadableControlsRefuse(world, lines):
    """Controls qmail-send cannot read stop the start in the same way."""
    path = os.path.join(world.root, "control", "locals")
    os.unlink(path)
    os.mkdir(path)
    world.sender = Sender(world.queue, world.controls, world.clock, world.local, world.remote,
                          runBlocking=inline)
    with pytest.raises(StartRefused):
        world.sender.privilegedStartService()
    assert "alert: cannot start: unable to read controls" in lines


def test_bounceFailureRetried(world, lines):
    """A bounce that cannot be injected is retried later, and the message is kept until then."""
    world.local.answer = lambda m, s, r: PermFailure(b"no\n") if r == b"bad@localhost" else "hold"
    world.start()
    real = world.queue.begin
    calls = []

    def failing(how):
        calls.append(how)
        if calls.count(b"for bounce") == 1 and how == b"for bounce":
            raise TempFailure(b"qq trouble\n")
        return real(how)
    world.queue.begin = failing
    msgid = world.inject(b"joe@localhost", [b"bad@localhost"])
    assert "warning: trouble injecting bounce message, will try later" in lines
    assert msgid in world.files("mess")
    world.clock.advance(10)
    assert f"end msg {msgid}" in lines
    assert [m for m, _ in world.messages()] != [msgid]


def test_finishRemovesMessLast(world, monkeypatch):
    """mess/ goes last: once it is unlinked its inode (the id) may be reused by a new message
    at once, so a later unlink of intd/<id> would destroy that message's envelope."""
    world.control("concurrencylocal", b"0\n")
    world.start()
    msgid = world.inject(b"joe@example.org", [b"a@localhost"])
    removed = []
    real = os.unlink
    monkeypatch.setattr(os, "unlink", lambda p: (removed.append(p), real(p))[1])
    sendfinish.finishMessages(world.queue.queueDir, [msgid])
    assert removed[-1] == sendqueue.path(world.queue.queueDir, "mess", msgid)
    assert world.files("mess") == [] and world.files("info") == []
