"""
The rest of qmail-send (spec/queue.md §6, §8, §9): reading its controls, the stand-in
remote channel, the C{lock/trigger} reader, and what happens when a message has no channel
left — the bounce (or double bounce) injected through the queue, then the removal of its
files in batches off the reactor thread.

A mixin of L{qmailtx.send.Sender}; like it, writes queue files only through
L{qmailtx.sendqueue} and L{qmailtx.sendfinish}, and injects only through the Queue.  Never
opens sockets.
"""

import os
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from qmailtx import log, sendfinish, sendqueue
from qmailtx.bounce import bounceEnvelope, bounceHead, cutVerp
from qmailtx.rewrite import LOCAL, REMOTE, Rewriter
from qmailtx.results import PermFailure, TempFailure
from qmailtx.schedule import DEFAULT_QUEUELIFETIME

SPAWN = 120
"""qmail's conf-spawn: the most simultaneous deliveries per channel."""
FINISH_BATCH = 128
"""Finished messages removed per thread call."""
BOUNCE_RETRY = 10
"""Seconds before a failed bounce injection is tried again."""
TRIGGER_READ = 1024

NO_REMOTE = TempFailure(b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n")

_log = Logger()


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


class Completion:
    """Bounces and removal of finished messages, for L{qmailtx.send.Sender}."""


    def _complete(self, job):
        """No channel left: bounce if there are failures, then remove the message."""
        del self.jobs[job.msgid]
        self._cleaning[job.msgid] = True
        if job.bounce:
            self._injectBounce(job)
        else:
            self._finish(job)

    def _injectBounce(self, job):
        self._busyOps += 1
        d = self._blocking(sendfinish.removeChannels, self.queueDir, job.msgid,
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
            return self._finish(job)
        sender = cutVerp(job.sender)
        envelope = bounceEnvelope(sender, self.config.doublebounceto,
                                  self.config.doublebouncehost)
        if envelope is None:
            log.event(f"triple bounce: discarding bounce/{job.msgid}")
            return self._finish(job)
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
            self._finish(job)
        return d.addCallback(committed)

    def _ebBounce(self, failure, job):
        log.warning("trouble injecting bounce message, will try later")
        if failure is not None and not failure.check(TempFailure, PermFailure, OSError):
            _log.failure("bounce injection", failure)
        if not self.stopping:
            self.reactor.callLater(BOUNCE_RETRY, self._injectBounce, job)

    def _finish(self, job):
        """
        Remove a finished message: a message preprocessed here without a bounce has its
        channel and info files (and a small C{mess/} file) renamed into the spare pool at
        once, on this thread; only a C{mess/} unlink (which waits for the disk) goes to a
        thread in a batch.
        A thread renaming them would trade the interpreter lock with this one at each
        system call, which costs more than the renames.
        """
        log.event(f"end msg {job.msgid}")
        if job.known and not job.bounce:
            if sendfinish.retire(self.queueDir, job.msgid, job.kinds, self.spares):
                if (job.size <= sendfinish.SMALL_MESS
                        and sendfinish.retireMess(self.queueDir, job.msgid, self.spares)):
                    self._cleaning.pop(job.msgid, None)
                    self._preprocessMore()
                    return
                item = sendfinish.finishing(job.msgid, (), False, intd=False, info=False)
            else:
                item = sendfinish.finishing(job.msgid, job.kinds, False, intd=False)
        elif job.known:
            item = sendfinish.finishing(job.msgid, (), True, intd=False)
        else:
            item = sendfinish.finishing(job.msgid)
        self._finishing.append(item)
        self._finishMore()

    def _finishMore(self):
        if self._finishRunning or not self._finishing:
            return
        batch = self._finishing[:FINISH_BATCH]
        del self._finishing[:FINISH_BATCH]
        self._finishRunning = True
        d = self._op(sendfinish.finishMessages, self.queueDir, batch, self.spares)
        d.addBoth(self._cbFinished, batch)

    def _cbFinished(self, troubles, batch):
        self._finishRunning = False
        if isinstance(troubles, list):
            for msgid, error in troubles:
                log.warning(f"unable to remove msg {msgid}: {error}")
        for item in batch:
            self._cleaning.pop(item[0], None)
        self._finishMore()
        self._preprocessMore()

    def cleanup(self):
        """queue.md §9: remove what crashed injections left, off the reactor thread."""
        if self.stopping:
            return
        d = self._op(sendfinish.cleanupScan, self.queueDir, self.now())
        d.addErrback(lambda f: log.warning("cleanup failed: " + f.getErrorMessage()))


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
