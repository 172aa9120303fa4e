"""
qmail-send's scheduler (spec/queue.md §5–7): which channel of which message is due, its
pass over the channel's recipients within the lanes' concurrency, starting each delivery
(remote recipients batched by host and sender), and what each result does: a success
marks the record done, a permanent failure appends to C{bounce/} first, a deferral waits
for the next retry; a channel with every record done is removed.

A mixin of L{qmailtx.send.Sender}; writes queue files only through L{qmailtx.sendqueue}
and L{qmailtx.sendfinish}, run in threads.  Never opens sockets and never runs user code:
the local spawner and the remote deliverer do.
"""

import heapq
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from qmailtx import log, sendfinish, sendqueue
from qmailtx.bounce import bounceEntry
from qmailtx.rewrite import LOCAL, REMOTE, verpSender
from qmailtx.results import Delivered, PermFailure, TempFailure
from qmailtx.schedule import expire, isDying, nextRetry
from qmailtx.sendchannel import MessageJob

REMOTE_BATCH = 100
"""Recipients of one message, one host and one sender passed in one remote call."""

_log = Logger()

LOST = TempFailure(b"Internal error: delivery result lost. (#4.3.0)\n")


class DeliveryPasses:
    """Scheduling, passes and delivery results, for L{qmailtx.send.Sender}."""

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
