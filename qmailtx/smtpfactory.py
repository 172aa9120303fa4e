"""
One SMTP listener's shared state (L{SMTPFactory}): the control snapshot its sessions start
from, the queue (or the C{QMAILQUEUE} program) they hand messages to, the addresses that are
this host (ipme) and the idle-timeout wheel.  The sessions themselves are
L{qmailtx.smtp.SMTPServer}.  Reads C{control/} through L{qmailtx.control}; writes nothing;
must not import the queue's or delivery's modules.
"""

from twisted.internet.protocol import Factory

from qmailtx.ipme import ipmeOrNone
from qmailtx.smtp import SMTPServer
from qmailtx.smtpsecure import SecureFactory

CONTROL_RECHECK = 1.0
"""Seconds a control snapshot serves new connections before the files are stat'ed again."""


class SMTPFactory(SecureFactory, Factory):
    """
    Shared state of one SMTP listener: controls, queue, ipme, the idle-timeout wheel.

    @ivar queue: the in-process L{qmailtx.queue.Queue}.
    @ivar programQueue: C{(program, env) -> writer source} for C{QMAILQUEUE}.
    """

    protocol = SMTPServer
    busyReply = b"421 too many connections from your address (#4.3.2)\r\n"

    def __init__(self, controls, queue, clock, ipme=frozenset(), programQueue=None):
        from qmailtx.control import loadSmtpControls
        from qmailtx.timeouts import IdleTimeouts

        self.controlDir = controls
        self._load = loadSmtpControls
        self.queue = queue
        self.clock = clock
        self.ipme = ipme
        self.programQueue = programQueue
        self.timeouts = IdleTimeouts(clock)
        self._snapshot = None
        self._loadedAt = 0.0

    def ownAddresses(self):
        """
        This host's addresses (ipme) for localiphost, or C{None} when they cannot be read:
        looked up again for each session until they can, as each qmail-smtpd looks them up.
        """
        if self.ipme is None:
            self.ipme = ipmeOrNone()
        return self.ipme

    def loadControls(self):
        """
        The current snapshot; the same object while no control file changed.  qmail-smtpd
        re-reads its controls per connection; the files are looked at (a stat each) at most
        every L{CONTROL_RECHECK} seconds, so a burst of connections costs no more, and an edit
        still reaches the next connection a moment later.
        """
        now = self.clock.seconds()
        if self._snapshot is not None and now - self._loadedAt < CONTROL_RECHECK:
            return self._snapshot
        snapshot = self._load(self.controlDir)
        self._loadedAt = now
        if snapshot != self._snapshot:
            self._snapshot = snapshot
        return self._snapshot

    def shuttingDown(self):
        """Say goodbye to every session still open (L{qmailtx.commits.Commits.farewells})."""
        for session in self.timeouts.watched():
            session.shuttingDown()

    def queueFor(self, env):
        program = env.get("QMAILQUEUE")
        if program and self.programQueue is not None:
            return self.programQueue(program, env)
        return self.queue

    def envFromTransport(self, transport):
        peer, host = transport.getPeer(), transport.getHost()
        return {
            "PROTO": "TCP",
            "TCPREMOTEIP": getattr(peer, "host", "unknown"),
            "TCPREMOTEPORT": str(getattr(peer, "port", 0)),
            "TCPLOCALIP": getattr(host, "host", "unknown"),
            "TCPLOCALPORT": str(getattr(host, "port", 0)),
        }

    def stopFactory(self):
        self.timeouts.stop()

