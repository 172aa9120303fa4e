"""
qmail-send's intake (spec/queue.md §4): C{todo/} entries announced in-process by the Queue,
by the C{lock/trigger} FIFO or by the periodic scan are preprocessed in batches
(L{qmailtx.sendpreprocess.stageBatch} here, the group's flush by the flusher or a thread, then
L{qmailtx.sendpreprocess.finishBatch}) and handed to the scheduler.

A mixin of L{qmailtx.send.Sender}; writes nothing itself.  Never opens sockets.
"""

import os

from twisted.python.failure import Failure

from qmailtx import log, sendpreprocess, sendqueue
from qmailtx.flushclient import flushVia
from qmailtx.queuefiles import syncFiles
from qmailtx.senddone import _TriggerReader

SCAN_INTERVAL = 1500
"""Seconds between scans of C{todo/} without a trigger (qmail-send's 25 minutes)."""
TODO_BATCH = 64
"""C{todo/} entries preprocessed per batch (they share one flush)."""
TODO_PARALLEL = 1
"""Preprocessing batches in flight at once."""
TODO_RETRY = 60
"""Seconds before C{todo/} is looked at again after trouble preprocessing an entry (a
flush that failed, a file that could not be written): the entry is safe where it is, and
a flusher that died is replaced by threads at once."""
TODO_GATHER = 0.01
"""Seconds announced C{todo/} entries gather before they are preprocessed.  They are safe in
the queue already and no client waits for this step, so under load the wait turns many
small batches, each paying for its own flush of the disk, into a few large ones; a
delivery starts at most this much later."""


class TodoIntake:
    """From C{todo/} to preprocessed messages, for L{qmailtx.send.Sender}."""


    def todoArrived(self, msgids):
        """The queue's observer: C{todo/<msgid>} exists now for each of C{msgids}."""
        if self.stopping:
            return
        for msgid in msgids:
            self._wantTodo(msgid)
        if len(self._todoWanted) >= TODO_BATCH:
            self._cancelTodoGather()
            self._preprocessMore()
        elif self._todoTimer is None:
            self._todoTimer = self.reactor.callLater(TODO_GATHER, self._todoGathered)

    def _todoGathered(self):
        self._todoTimer = None
        self._preprocessMore()

    def _retryTodoLater(self):
        """One scan of C{todo/} L{TODO_RETRY} seconds on, however many entries had trouble."""
        if self.stopping:
            return
        if self._todoRetry is None or not self._todoRetry.active():
            self._todoRetry = self.reactor.callLater(TODO_RETRY, self.scanTodo)

    def _cancelTodoGather(self, retryToo=False):
        names = ("_todoTimer", "_todoRetry") if retryToo else ("_todoTimer",)
        for name in names:
            timer = getattr(self, name)
            setattr(self, name, None)
            if timer is not None and timer.active():
                timer.cancel()

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
            try:
                results, opened = sendpreprocess.stageBatch(
                    self.queueDir, batch, self.config.rewriter.rewrite, self.spares)
            except Exception as e:
                self._cbPreprocessed(Failure(e), batch)
                continue
            d = flushVia(self.queue.flusher, self._blocking, syncFiles, self.queueDir, opened)
            d.addBoth(self._cbStagedSynced, results, opened)
            d.addBoth(self._cbPreprocessed, batch)

    def _cbStagedSynced(self, synced, results, opened):
        sendpreprocess.closeAll(opened)
        if isinstance(synced, Failure):
            return sendpreprocess.failBatch(results, synced.value)
        return sendpreprocess.finishBatch(self.queueDir, results, self.spares)

    def _cbPreprocessed(self, results, batch):
        self._todoRunning -= 1
        self._todoInFlight.difference_update(batch)
        if not isinstance(results, list):
            log.warning("trouble preprocessing todo/: " + results.getErrorMessage())
            self._retryTodoLater()
            results = []
        for msgid, outcome in results:
            if outcome is None:
                continue
            if isinstance(outcome, sendpreprocess.UnknownRecord):
                log.warning(f"unknown record type in todo/{msgid}")
                continue
            if isinstance(outcome, OSError):
                log.warning(f"trouble with todo/{msgid}: {outcome.strerror}; will try later")
                self._retryTodoLater()
                continue
            log.newMessage(msgid)
            log.infoMessage(msgid, outcome.size, outcome.sender,
                            outcome.qp.decode("ascii", "replace"),
                            outcome.uid.decode("ascii", "replace"))
            self._adopt(outcome)
        self._pumpAll()
        self._preprocessMore()
        self._checkIdle()
