"""
qmail-send inside the daemon (spec/queue.md §4–10): the L{Sender} service.

It takes messages from C{todo/} (told in-process by the L{qmailtx.queue.Queue}, and by the
C{lock/trigger} FIFO for outside injectors), splits them into the local and remote channels,
starts deliveries within C{concurrencylocal}/C{concurrencyremote}, retries on qmail's
schedule, writes and injects bounces, and removes finished messages, logging qmail-send's
lines.  This module holds the service and the scheduler; intake of C{todo/} is
L{qmailtx.sendtodo}, bounces and removal L{qmailtx.senddone}, the in-memory schedule
L{qmailtx.sendchannel}, and the file work L{qmailtx.sendqueue}, run in threads.  The
schedule is persisted as channel file mtimes on exit.

Writes C{info/ local/ remote/ bounce/ spare/} (through sendqueue) and C{lock/sendmutex}'s lock;
injects bounces only through the Queue.  Never opens sockets and never runs user code: the
local spawner and the remote deliverer do.
"""

import fcntl
import heapq
import itertools
import os
import signal
from collections import deque

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from qmailtx import log, sendfinish, sendqueue
from qmailtx.bounce import bounceEntry
from qmailtx.control import ControlError
from qmailtx.rewrite import LOCAL, REMOTE, verpSender
from qmailtx.results import Delivered, PermFailure, TempFailure
from qmailtx.schedule import LOCAL_SKIP, REMOTE_SKIP, expire, isDying, nextRetry
from qmailtx.sendchannel import Lane, MessageJob
from qmailtx.senddone import Completion, SendControls, UnavailableRemote
from qmailtx.spares import SparePool
from qmailtx.sendtodo import SCAN_INTERVAL, TodoIntake

CLEANUP_INTERVAL = 76431
"""Seconds between scans for crashed injections (queue.md §9)."""
REMOTE_BATCH = 100
"""Recipients of one message, one host and one sender passed in one remote call."""

_log = Logger()

LOST = TempFailure(b"Internal error: delivery result lost. (#4.3.0)\n")


class Sender(TodoIntake, Completion, service.Service):
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
        self.spares = SparePool(self.queueDir)

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
        d = self._op(sendqueue.loadQueue, self.queueDir, self.spares)
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
            failed = sendfinish.saveSchedule(self.queueDir, entries)
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
                self._op(sendfinish.removeChannels, self.queueDir, job.msgid, [channel.kind])
            return
        channel.nextTime = channel.next
        if self.stopping:
            return
        if channel.nextTime <= self.now():
            self._enqueue(channel)
            self._pumpAll()
        else:
            self._schedule(channel)

def _host(address):
    return address[address.rfind(b"@") + 1:].lower()
