"""
The sender's in-memory schedule: one L{MessageJob} per preprocessed message, one L{Channel}
per channel file, and one L{Lane} per channel kind with its concurrency.

Plain state, no I/O and no Twisted: L{qmailtx.send.Sender} drives it.
"""

from collections import deque

from qmailtx import sendqueue


class Lane:
    """
    The deliveries of one kind (local or remote).

    @ivar skip: qmail's chanskip (10 local, 20 remote) for the retry schedule.
    @ivar concurrency: at most this many deliveries at once (0 holds the channel).
    @ivar due: channels whose time has come, waiting for a free slot to start their pass.
    @ivar active: channels in a pass that still have recipients to start.
    """

    def __init__(self, kind, skip, concurrency):
        self.kind = kind
        self.skip = skip
        self.concurrency = concurrency
        self.running = 0
        self.pumping = False
        self.again = False
        self.due = deque()
        self.active = deque()


class Channel:
    """
    One C{local/} or C{remote/} file of a message and its pass state.

    @ivar nextTime: when the next pass may start (Unix seconds).
    @ivar records: every recipient of the file (L{sendqueue.Record}), done or not.
    @ivar queued: waiting in its lane's C{due}.
    @ivar inPass: a pass is running (recipients being delivered).
    """

    def __init__(self, job, kind, nextTime, records):
        self.job = job
        self.kind = kind
        self.path = sendqueue.path(job.queueDir, kind, job.msgid)
        self.nextTime = nextTime
        self.records = records
        self.queued = False
        self.inPass = False
        self.dying = False
        self.next = None
        self.toStart = deque()
        self.outstanding = 0
        self.disk = []


class MessageJob:
    """A preprocessed message: sender, birth, its channels, whether it has a bounce file."""

    def __init__(self, message, queueDir):
        self.msgid = message.msgid
        self.queueDir = queueDir
        self.birth = message.birth
        self.sender = message.sender
        self.bounce = message.bounce
        self.known = message.known
        self.size = message.size
        self.kinds = tuple(message.channels)
        self.messPath = sendqueue.path(queueDir, "mess", message.msgid)
        self.channels = {}
        for kind, (nextTime, records) in message.channels.items():
            channel = Channel(self, kind, nextTime, records)
            if all(r.done for r in records):
                continue
            self.channels[kind] = channel
