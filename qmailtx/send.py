"""
qmail-send inside the daemon (spec/queue.md §4–10): the L{Sender} service.

It takes messages from C{todo/} (told in-process by the L{qmailtx.queue.Queue}, and by the
C{lock/trigger} FIFO for outside injectors), splits them into the local and remote channels,
starts deliveries within C{concurrencylocal}/C{concurrencyremote}, retries on qmail's
schedule, writes and injects bounces, and removes finished messages, logging qmail-send's
lines.  This module holds the service: start and stop, the C{sendmutex} lock, signals,
controls and status.  Intake of C{todo/} is L{qmailtx.sendtodo}, the scheduler and its
deliveries L{qmailtx.sendpass}, bounces and removal L{qmailtx.senddone}, the in-memory
schedule L{qmailtx.sendchannel}, and the file work L{qmailtx.sendqueue},
L{qmailtx.sendpreprocess} and L{qmailtx.sendfinish}, run in threads.  The schedule is
persisted as channel file mtimes on exit.

Writes C{info/ local/ remote/ bounce/ spare/} (through the file work modules) and
C{lock/sendmutex}'s lock; injects bounces only through the Queue.  Never opens sockets and
never runs user code: the local spawner and the remote deliverer do.
"""

import fcntl
import itertools
import os
import signal

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool

from qmailtx import log, sendfinish, sendqueue
from qmailtx.control import ControlError
from qmailtx.results import StartRefused
from qmailtx.rewrite import LOCAL, REMOTE
from qmailtx.schedule import LOCAL_SKIP, REMOTE_SKIP
from qmailtx.sendchannel import Lane
from qmailtx.senddone import Completion, SendControls, UnavailableRemote
from qmailtx.sendpass import DeliveryPasses
from qmailtx.spares import SparePool
from qmailtx.sendtodo import SCAN_INTERVAL, TodoIntake

CLEANUP_INTERVAL = 76431
"""Seconds between scans for crashed injections (queue.md §9)."""


class Sender(TodoIntake, Completion, DeliveryPasses, service.Service):
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
        self._todoTimer = None
        self._todoRetry = None
        self._scanning = False
        self._rescan = False
        self._loaded = False
        self._flushWhenLoaded = False
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

    def privilegedStartService(self):
        """
        Read the controls, take C{lock/sendmutex}, and catch SIGALRM and SIGHUP, all
        before any listener binds: a second daemon on the same root must stop before it
        takes a connection or replaces the first one's sockets, and a C{qmailctl doqueue}
        sent the moment the port answers must not meet SIGALRM's default action, which
        kills the daemon.

        @raise StartRefused: controls unreadable; no queue, or a mutex that cannot be
            opened or that another qmail-send holds; a queue that could not be loaded.
        """
        service.Service.privilegedStartService(self)
        why = self._claim()
        if why is not None:
            log.alert("cannot start: " + why)
            raise StartRefused(why)
        if self.handleSignals:
            signal.signal(signal.SIGALRM, lambda *a: self.reactor.callFromThread(self.flush))
            signal.signal(signal.SIGHUP, lambda *a: self.reactor.callFromThread(self.reload))

    def _claim(self):
        """The controls, the mutex and a readable queue, once; the reason it cannot
        start, or C{None}."""
        if self._mutexFd is not None:
            return None
        try:
            config = SendControls(self.controls)
        except (ControlError, ValueError, OSError):
            return "unable to read controls"
        why = self._lockMutex()
        if why is not None:
            return why
        unreadable = sendqueue.unreadableQueue(self.queueDir)
        if unreadable is not None:
            self._unlockMutex()
            return "unable to read the queue: " + unreadable
        self.config = config
        return None

    def startService(self):
        service.Service.startService(self)
        why = self._claim()
        if why is not None:
            return self._refuse(why)
        self.lanes = {
            LOCAL: Lane(LOCAL, LOCAL_SKIP, self.config.concurrency[LOCAL]),
            REMOTE: Lane(REMOTE, REMOTE_SKIP, self.config.concurrency[REMOTE]),
        }
        self.logStatus()
        self.queue.addObserver(self.todoArrived)
        self._openTrigger()
        d = self._op(sendqueue.loadQueue, self.queueDir, self.spares)
        d.addCallbacks(self._cbLoaded, self._ebLoaded)

    def _refuse(self, why):
        log.alert("cannot start: " + why)
        self.running = False
        self._unlockMutex()
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def _unlockMutex(self):
        if self._mutexFd is not None:
            os.close(self._mutexFd)
            self._mutexFd = None

    def _lockMutex(self):
        """Take C{lock/sendmutex}: C{None}, or qmail-send's reason for not starting."""
        if not os.path.isdir(self.queueDir):
            return "unable to switch to queue directory"
        name = os.path.join(self.queueDir, "lock", "sendmutex")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return "unable to open mutex"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return "qmail-send is already running"
        self._mutexFd = fd
        return None

    def _cbLoaded(self, result):
        messages, warnings = result
        for text in warnings:
            log.warning(text)
        for message in messages:
            self._adopt(message)
        self._loaded = True
        self.scanTodo()
        if self._flushWhenLoaded:
            self._flushWhenLoaded = False
            self.flush()
        self._pumpAll()
        for interval, f in ((SCAN_INTERVAL, self.scanTodo), (CLEANUP_INTERVAL, self.cleanup)):
            loop = LoopingCall(f)
            loop.clock = self.reactor
            loop.start(interval, now=(f == self.cleanup))
            self._loops.append(loop)

    def _ebLoaded(self, failure):
        self._refuse("unable to read the queue: " + failure.getErrorMessage())

    def stopService(self):
        """SIGTERM: start nothing new, wait for running deliveries, persist the schedule."""
        service.Service.stopService(self)
        if self.config is None or self._mutexFd is None:
            return None
        self.stopping = True
        self.queue.removeObserver(self.todoArrived)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._cancelTodoGather(retryToo=True)
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
        """SIGALRM: every scheduled channel is due now (once the queue is loaded, if it is not yet)."""
        if not self._loaded:
            self._flushWhenLoaded = True
            return
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
        if self.config is None:
            return
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
