"""
qmail-send inside the daemon (spec/queue.md §4–10): the L{Sender} service.

It takes messages from C{todo/} (told in-process by the L{qmailtx.queue.Queue}, and by the
C{lock/trigger} FIFO for outside injectors), splits them into the local and remote channels,
starts deliveries within C{concurrencylocal}/C{concurrencyremote}, retries on qmail's
schedule, writes and injects bounces, and removes finished messages, logging qmail-send's
lines.  The file work lives in L{qmailtx.sendqueue} and runs in threads; the schedule is
kept in memory and persisted as channel file mtimes on exit.

Writes C{info/ local/ remote/ bounce/} (through sendqueue) and C{lock/sendmutex}'s lock;
injects bounces only through the Queue.  Never opens sockets and never runs user code: the
local spawner and the remote deliverer do.
"""

import fcntl
import heapq
import itertools
import os
import signal
from collections import deque
from dataclasses import replace

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from qmailtx import log, sendqueue
from qmailtx.bounce import bounceEntry, bounceEnvelope, bounceHead, cutVerp
from qmailtx.control import ControlError
from qmailtx.rewrite import LOCAL, REMOTE, Rewriter, verpSender
from qmailtx.results import Delivered, PermFailure, TempFailure
from qmailtx.schedule import (DEFAULT_QUEUELIFETIME, LOCAL_SKIP, REMOTE_SKIP, expire,
                              isDying, nextRetry)
from qmailtx.sendchannel import Lane, MessageJob

SPAWN = 120
"""qmail's conf-spawn: the most simultaneous deliveries per channel."""
SCAN_INTERVAL = 1500
"""Seconds between scans of C{todo/} without a trigger (qmail-send's 25 minutes)."""
CLEANUP_INTERVAL = 76431
"""Seconds between scans for crashed injections (queue.md §9)."""
TODO_BATCH = 64
"""C{todo/} entries preprocessed per thread call (their fsyncs share journal commits)."""
TODO_PARALLEL = 3
"""Preprocessing thread calls in flight at once."""
FINISH_BATCH = 128
"""Finished messages removed per thread call."""
BOUNCE_RETRY = 10
"""Seconds before a failed bounce injection or bounce append is tried again."""
REMOTE_BATCH = 100
"""Recipients of one message, one host and one sender passed in one remote call."""
TRIGGER_READ = 1024

_log = Logger()

NO_REMOTE = TempFailure(b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n")
LOST = TempFailure(b"Internal error: delivery result lost. (#4.3.0)\n")


class UnavailableRemote:
    """The remote channel while no C{qmailtx.remote} exists: every recipient deferred."""

    def deliver(self, host, sender, recipients, messPath):
        return defer.succeed([NO_REMOTE] * len(recipients))


class SendControls:
    """What qmail-send reads from C{control/} at start (SIGHUP re-reads the rewriting)."""

    def __init__(self, controls):
        self.rewriter = Rewriter.fromControls(controls)
        self.concurrency = {
            LOCAL: min(controls.int("concurrencylocal", 10), SPAWN),
            REMOTE: min(controls.int("concurrencyremote", 20), SPAWN),
        }
        self.queuelifetime = controls.int("queuelifetime", DEFAULT_QUEUELIFETIME)
        self.bouncefrom = controls.line("bouncefrom", b"MAILER-DAEMON")
        self.bouncehost = controls.lineOrMe("bouncehost", b"bouncehost")
        self.doublebounceto = controls.line("doublebounceto", b"postmaster")
        self.doublebouncehost = controls.lineOrMe("doublebouncehost", b"doublebouncehost")

    def reload(self, controls):
        """SIGHUP: new C{locals} and C{virtualdomains}, everything else kept."""
        fresh = Rewriter.fromControls(controls)
        self.rewriter = replace(self.rewriter, locals=fresh.locals,
                                virtualdomains=fresh.virtualdomains)


class Sender(service.Service):
    """
    The queue manager.  C{local} has C{deliver(messPath, sender, recipient) -> Deferred(result)}
    (L{qmailtx.lspawn.LocalSpawner}); C{remote} has C{deliver(host, sender, recipients,
    messPath) -> Deferred([result])} (C{qmailtx.remote.RemoteDeliverer}); neither errbacks.

    @param runBlocking: C{f(callable, *args) -> Deferred} for file work; default the
        reactor's thread pool (tests pass a synchronous one).
    @param handleSignals: install SIGALRM/SIGHUP handlers (the daemon does; tests don't).
    """

    name = "send"

    def __init__(self, queue, controls, reactor, local, remote=None, runBlocking=None,
                 handleSignals=False):
        self.queue = queue
        self.queueDir = queue.queueDir
        self.controls = controls
        self.reactor = reactor
        self.local = local
        self.remote = remote if remote is not None else UnavailableRemote()
        self._runBlocking = runBlocking
        self.handleSignals = handleSignals
        self.config = None
        self.jobs = {}
        self.lanes = {}
        self.paused = False
        self.stopping = False
        self._numbers = itertools.count(1)
        self._todoWanted = {}
        self._todoInFlight = set()
        self._todoRunning = 0
        self._scanning = False
        self._rescan = False
        self._loaded = False
        self._cleaning = {}
        self._finishing = []
        self._finishRunning = False
        self._timer = None
        self._timerAt = None
        self._heap = []
        self._seq = itertools.count()
        self._mutexFd = None
        self._triggerReader = None
        self._loops = []
        self._idle = None
        self._busyOps = 0

    # -- plumbing ---------------------------------------------------------------------

    def _blocking(self, f, *args):
        if self._runBlocking is not None:
            return defer.maybeDeferred(self._runBlocking, f, *args)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def _op(self, f, *args):
        """File work counted as in flight, so stopping waits for it."""
        self._busyOps += 1
        d = self._blocking(f, *args)

        def done(result):
            self._busyOps -= 1
            self._checkIdle()
            return result
        return d.addBoth(done)

    def now(self):
        return self.reactor.seconds()

    # -- start and stop ---------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        try:
            self.config = SendControls(self.controls)
        except (ControlError, ValueError, OSError):
            return self._refuse("unable to read controls")
        if not self._lockMutex():
            return self._refuse("qmail-send is already running")
        self.lanes = {
            LOCAL: Lane(LOCAL, LOCAL_SKIP, self.config.concurrency[LOCAL]),
            REMOTE: Lane(REMOTE, REMOTE_SKIP, self.config.concurrency[REMOTE]),
        }
        self.queue.addObserver(self.todoArrived)
        if self.handleSignals:
            signal.signal(signal.SIGALRM, lambda *a: self.reactor.callFromThread(self.flush))
            signal.signal(signal.SIGHUP, lambda *a: self.reactor.callFromThread(self.reload))
        self._openTrigger()
        d = self._op(sendqueue.loadQueue, self.queueDir)
        d.addCallbacks(self._cbLoaded, self._ebLoaded)

    def _refuse(self, why):
        log.alert("cannot start: " + why)
        self.running = False
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def _lockMutex(self):
        name = os.path.join(self.queueDir, "lock", "sendmutex")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._mutexFd = fd
        return True

    def _cbLoaded(self, result):
        messages, warnings = result
        for text in warnings:
            log.warning(text)
        for message in messages:
            self._adopt(message)
        self._loaded = True
        self.scanTodo()
        self._pumpAll()
        for interval, f in ((SCAN_INTERVAL, self.scanTodo), (CLEANUP_INTERVAL, self.cleanup)):
            loop = LoopingCall(f)
            loop.clock = self.reactor
            loop.start(interval, now=(f == self.cleanup))
            self._loops.append(loop)

    def _ebLoaded(self, failure):
        log.alert("cannot start: unable to read the queue: " + failure.getErrorMessage())
        self._refuse("unable to read the queue")

    def stopService(self):
        """SIGTERM: start nothing new, wait for running deliveries, persist the schedule."""
        service.Service.stopService(self)
        if self.config is None or self._mutexFd is None:
            return None
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._closeTrigger()
        d = self._idle = defer.Deferred()
        self._checkIdle()
        return d.addCallback(self._persist)

    def _checkIdle(self):
        busy = any(lane.running for lane in self.lanes.values())
        if self._idle is not None and not busy and not self._busyOps and not self._todoRunning:
            d, self._idle = self._idle, None
            d.callback(None)

    def _persist(self, _):
        now = self.now()
        entries = []
        for job in self.jobs.values():
            for kind, channel in job.channels.items():
                if not channel.inPass:
                    entries.append((kind, job.msgid, channel.nextTime or now))
        try:
            failed = sendqueue.saveSchedule(self.queueDir, entries)
        except OSError:
            failed = [(k, m) for k, m, _ in entries]
        for kind, msgid in failed:
            log.warning(f"unable to utime {kind}/{msgid % 23}/{msgid}; "
                        "message will be retried too soon")
        self.logStatus()
        log.event("status: exiting")
        os.close(self._mutexFd)
        self._mutexFd = None

    # -- signals and control ----------------------------------------------------------

    def flush(self):
        """SIGALRM: every scheduled channel is due now."""
        now = self.now()
        for job in self.jobs.values():
            for channel in job.channels.values():
                if not channel.inPass and not channel.queued:
                    channel.nextTime = now
                    self._enqueue(channel)
        self._arm()
        self._pumpAll()

    def reload(self):
        """SIGHUP: re-read C{locals} and C{virtualdomains}; on trouble keep the old ones."""
        try:
            self.config.reload(self.controls)
        except (ControlError, ValueError, OSError):
            log.alert("unable to reread controls")

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False
        self._pumpAll()

    def statusText(self):
        lanes = self.lanes
        text = "local %d/%d remote %d/%d" % (
            lanes[LOCAL].running, lanes[LOCAL].concurrency,
            lanes[REMOTE].running, lanes[REMOTE].concurrency) if lanes else "not started"
        return text + (" exitasap" if self.stopping else "")

    def logStatus(self):
        log.event("status: " + self.statusText())

    # -- todo/ ------------------------------------------------------------------------

    def todoArrived(self, msgid):
        """The queue's observer: C{todo/<msgid>} exists now."""
        self._wantTodo(msgid)
        self._preprocessMore()

    def _wantTodo(self, msgid):
        if (msgid not in self.jobs and msgid not in self._todoWanted
                and msgid not in self._todoInFlight):
            self._todoWanted[msgid] = True

    def _openTrigger(self):
        name = os.path.join(self.queueDir, "lock", "trigger")
        try:
            fd = os.open(name, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.warning(f"unable to open lock/trigger: {e.strerror}; scanning todo/ "
                        f"every {SCAN_INTERVAL} seconds")
            return
        self._triggerReader = _TriggerReader(fd, self.scanTodo)
        if hasattr(self.reactor, "addReader"):
            self.reactor.addReader(self._triggerReader)

    def _closeTrigger(self):
        reader, self._triggerReader = self._triggerReader, None
        if reader is not None:
            if hasattr(self.reactor, "removeReader"):
                self.reactor.removeReader(reader)
            os.close(reader.fd)

    def scanTodo(self):
        """Look at C{todo/} (trigger, timer): one listing at a time, coalesced."""
        if self.stopping or not self._loaded:
            return
        if self._scanning:
            self._rescan = True
            return
        self._scanning = True
        self._op(sendqueue.listTodo, self.queueDir).addBoth(self._cbScanned)

    def _cbScanned(self, result):
        self._scanning = False
        if isinstance(result, list):
            for msgid in sorted(result):
                self._wantTodo(msgid)
        else:
            log.warning("unable to read todo/: " + result.getErrorMessage())
        self._preprocessMore()
        if self._rescan:
            self._rescan = False
            self.scanTodo()

    def _preprocessMore(self):
        if not self._loaded or self.stopping:
            return
        while self._todoWanted and self._todoRunning < TODO_PARALLEL:
            batch = []
            for msgid in list(self._todoWanted):
                if msgid in self._cleaning:
                    continue
                del self._todoWanted[msgid]
                batch.append(msgid)
                if len(batch) == TODO_BATCH:
                    break
            if not batch:
                return
            self._todoRunning += 1
            self._todoInFlight.update(batch)
            d = self._blocking(sendqueue.preprocessBatch, self.queueDir, batch,
                               self.config.rewriter.rewrite)
            d.addBoth(self._cbPreprocessed, batch)

    def _cbPreprocessed(self, results, batch):
        self._todoRunning -= 1
        self._todoInFlight.difference_update(batch)
        if not isinstance(results, list):
            log.warning("trouble preprocessing todo/: " + results.getErrorMessage())
            results = []
        for msgid, outcome in results:
            if outcome is None:
                continue
            if isinstance(outcome, sendqueue.UnknownRecord):
                log.warning(f"unknown record type in todo/{msgid}")
                continue
            if isinstance(outcome, OSError):
                log.warning(f"trouble with todo/{msgid}: {outcome.strerror}; will try later")
                continue
            log.newMessage(msgid)
            log.infoMessage(msgid, outcome.size, outcome.sender,
                            outcome.qp.decode("ascii", "replace"),
                            outcome.uid.decode("ascii", "replace"))
            self._adopt(outcome)
        self._pumpAll()
        self._preprocessMore()
        self._checkIdle()

    # -- scheduling ---------------------------------------------------------------------

    def _adopt(self, message):
        job = MessageJob(message, self.queueDir)
        self.jobs[job.msgid] = job
        if not job.channels:
            self._complete(job)
            return
        now = self.now()
        for channel in job.channels.values():
            if channel.nextTime is None or channel.nextTime <= now:
                channel.nextTime = now
                self._enqueue(channel)
            else:
                self._schedule(channel)

    def _schedule(self, channel):
        heapq.heappush(self._heap, (channel.nextTime, next(self._seq), channel))
        self._arm()

    def _arm(self):
        while self._heap and (self._heap[0][2].inPass or self._heap[0][2].queued
                              or self._heap[0][2].nextTime != self._heap[0][0]
                              or self._heap[0][2].job.msgid not in self.jobs):
            heapq.heappop(self._heap)
        if not self._heap or self.stopping:
            return
        when = self._heap[0][0]
        if self._timer is not None and self._timer.active():
            if self._timerAt <= when:
                return
            self._timer.cancel()
        self._timerAt = when
        self._timer = self.reactor.callLater(max(0, when - self.now()), self._wake)

    def _wake(self):
        now = self.now()
        while self._heap and self._heap[0][0] <= now:
            _, _, channel = heapq.heappop(self._heap)
            if (not channel.inPass and not channel.queued and channel.nextTime <= now
                    and channel.job.msgid in self.jobs):
                self._enqueue(channel)
        self._arm()
        self._pumpAll()

    def _enqueue(self, channel):
        channel.queued = True
        self.lanes[channel.kind].due.append(channel)

    def _pumpAll(self):
        for lane in self.lanes.values():
            self._pump(lane)

    def _pump(self, lane):
        """Start what the lane's free slots allow; re-entered calls (synchronous results) just ask for another round."""
        if self.paused or self.stopping or not self._loaded:
            return
        if lane.pumping:
            lane.again = True
            return
        lane.pumping = True
        try:
            lane.again = True
            while lane.again:
                lane.again = False
                while lane.running < lane.concurrency:
                    if lane.active:
                        channel = lane.active[0]
                        if not channel.toStart:
                            lane.active.popleft()
                            continue
                        self._startDelivery(lane, channel)
                    elif lane.due:
                        channel = lane.due.popleft()
                        channel.queued = False
                        self._beginPass(lane, channel)
                    else:
                        break
        finally:
            lane.pumping = False

    def _beginPass(self, lane, channel):
        now = self.now()
        job = channel.job
        channel.inPass = True
        channel.dying = isDying(job.birth, now, self.config.queuelifetime)
        channel.next = nextRetry(job.birth, now, lane.skip)
        channel.toStart = deque(r for r in channel.records if not r.done)
        channel.outstanding = 0
        channel.disk = []
        if channel.toStart:
            lane.active.append(channel)
        else:
            self._endPass(channel)

    def _startDelivery(self, lane, channel):
        job = channel.job
        first = channel.toStart.popleft()
        sender = verpSender(job.sender, first.address)
        batch = [first]
        if channel.kind == REMOTE:
            host = _host(first.address)
            rest = deque()
            while channel.toStart and len(batch) < REMOTE_BATCH:
                record = channel.toStart.popleft()
                if (_host(record.address) == host
                        and verpSender(job.sender, record.address) == sender):
                    batch.append(record)
                else:
                    rest.append(record)
            rest.extend(channel.toStart)
            channel.toStart = rest
        items = []
        for record in batch:
            number = next(self._numbers)
            items.append((number, record))
            log.event(f"starting delivery {number}: msg {job.msgid} to {channel.kind} "
                      f"{log.logsafe(record.address)}")
        lane.running += 1
        channel.outstanding += 1
        self.logStatus()
        if channel.kind == LOCAL:
            d = defer.maybeDeferred(self.local.deliver, job.messPath, sender, first.address)
            d.addCallback(lambda result: [result])
        else:
            d = defer.maybeDeferred(self.remote.deliver, _host(first.address), sender,
                                    [r.address for _, r in items], job.messPath)
        d.addBoth(self._delivered, lane, channel, items)

    def _delivered(self, results, lane, channel, items):
        lane.running -= 1
        channel.outstanding -= 1
        if not isinstance(results, list) or len(results) != len(items):
            if not isinstance(results, list):
                _log.failure("delivery failed unexpectedly", results)
            results = [LOST] * len(items)
        job = channel.job
        for (number, record), result in zip(items, results):
            result = expire(result, channel.dying)
            text = log.logsafe(result.text)
            if isinstance(result, Delivered):
                log.event(f"delivery {number}: success: {text}")
                record.done = True
                if len(channel.records) > 1:
                    channel.disk.append(self._op(sendqueue.markDone, channel.path,
                                                 [record.offset]))
            elif isinstance(result, PermFailure):
                log.event(f"delivery {number}: failure: {text}")
                channel.disk.append(self._bounceFailure(channel, record, result))
            else:
                log.event(f"delivery {number}: deferral: {text}")
        self.logStatus()
        if not channel.outstanding and not channel.toStart:
            self._endPass(channel)
        self._pump(lane)
        self._checkIdle()

    def _bounceFailure(self, channel, record, result):
        """Append the bounce entry (fsync'd), then mark the record done."""
        job = channel.job
        entry = bounceEntry(record.address, result.text,
                            self.config.rewriter.virtualdomains)
        job.bounce = True

        def appended(_):
            record.done = True
            return self._op(sendqueue.markDone, channel.path, [record.offset])

        def failed(f):
            log.alert("unable to append to bounce message; HELP! sleeping...")
        d = self._op(sendqueue.appendBounce, self.queueDir, job.msgid, entry)
        return d.addCallbacks(appended, failed)

    def _endPass(self, channel):
        disk, channel.disk = channel.disk, []
        d = defer.gatherResults(disk, consumeErrors=True) if disk else defer.succeed(None)
        d.addBoth(lambda _: self._passDone(channel))

    def _passDone(self, channel):
        channel.inPass = False
        job = channel.job
        if all(r.done for r in channel.records):
            del job.channels[channel.kind]
            if not job.channels:
                self._complete(job)
            else:
                self._op(sendqueue.removeChannels, self.queueDir, job.msgid, [channel.kind])
            return
        channel.nextTime = channel.next
        if self.stopping:
            return
        if channel.nextTime <= self.now():
            self._enqueue(channel)
            self._pumpAll()
        else:
            self._schedule(channel)

    # -- completion ---------------------------------------------------------------------

    def _complete(self, job):
        """No channel left: bounce if there are failures, then remove the message."""
        del self.jobs[job.msgid]
        self._cleaning[job.msgid] = True
        if job.bounce:
            self._injectBounce(job)
        else:
            self._finish(job.msgid)

    def _injectBounce(self, job):
        self._busyOps += 1
        d = self._blocking(sendqueue.removeChannels, self.queueDir, job.msgid,
                           sendqueue.CHANNELS)
        d.addCallback(lambda _: self._blocking(sendqueue.readForBounce, self.queueDir,
                                               job.msgid))
        d.addCallback(self._cbBounceRead, job)
        d.addErrback(self._ebBounce, job)
        d.addBoth(self._opDone)

    def _opDone(self, _):
        self._busyOps -= 1
        self._checkIdle()

    def _cbBounceRead(self, read, job):
        text, original = read
        if text is None:
            return self._finish(job.msgid)
        sender = cutVerp(job.sender)
        envelope = bounceEnvelope(sender, self.config.doublebounceto,
                                  self.config.doublebouncehost)
        if envelope is None:
            log.event(f"triple bounce: discarding bounce/{job.msgid}")
            return self._finish(job.msgid)
        bounceSender, recipient = envelope
        try:
            writer = self.queue.begin(b"for bounce")
        except (TempFailure, PermFailure):
            return self._ebBounce(None, job)
        writer.write(bounceHead(sender, recipient, text, self.now(), self.config.bouncefrom,
                                self.config.bouncehost))
        writer.write(original)
        d = writer.commit(bounceSender, [recipient])

        def committed(_):
            log.event(f"bounce msg {job.msgid} qp {writer.qp}")
            self._finish(job.msgid)
        return d.addCallback(committed)

    def _ebBounce(self, failure, job):
        log.warning("trouble injecting bounce message, will try later")
        if failure is not None and not failure.check(TempFailure, PermFailure, OSError):
            _log.failure("bounce injection", failure)
        if not self.stopping:
            self.reactor.callLater(BOUNCE_RETRY, self._injectBounce, job)

    def _finish(self, msgid):
        log.event(f"end msg {msgid}")
        self._finishing.append(msgid)
        self._finishMore()

    def _finishMore(self):
        if self._finishRunning or not self._finishing:
            return
        batch = self._finishing[:FINISH_BATCH]
        del self._finishing[:FINISH_BATCH]
        self._finishRunning = True
        d = self._op(sendqueue.finishMessages, self.queueDir, batch)
        d.addBoth(self._cbFinished, batch)

    def _cbFinished(self, troubles, batch):
        self._finishRunning = False
        if isinstance(troubles, list):
            for msgid, error in troubles:
                log.warning(f"unable to remove msg {msgid}: {error}")
        for msgid in batch:
            self._cleaning.pop(msgid, None)
        self._finishMore()
        self._preprocessMore()

    def cleanup(self):
        """queue.md §9: remove what crashed injections left, off the reactor thread."""
        if self.stopping:
            return
        d = self._op(sendqueue.cleanupScan, self.queueDir, self.now())
        d.addErrback(lambda f: log.warning("cleanup failed: " + f.getErrorMessage()))


def _host(address):
    return address[address.rfind(b"@") + 1:].lower()


class _TriggerReader:
    """C{lock/trigger}, opened read-write so it never reports EOF; any byte means "scan"."""

    def __init__(self, fd, wake):
        self.fd = fd
        self.wake = wake

    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            while os.read(self.fd, TRIGGER_READ):
                pass
        except BlockingIOError:
            pass
        except OSError:
            pass
        self.wake()

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "trigger"
