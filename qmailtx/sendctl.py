"""
How C{qmailtx ctl} finds and steers a running daemon: C{ROOT/run/qmailtx.pid} and the
control socket C{ROOT/run/ctl} (both made by L{ControlService}).

The socket takes one word per line (C{stat}, C{pid}, C{doqueue}, C{reload}, C{pause}, C{cont})
and answers one line; only the daemon's user (and root) can reach it (C{run/} is 0700).
Pause and cont need it because the daemon is one process: SIGSTOP would stop the SMTP
listeners too.  Writes only C{ROOT/run/}; must not import queue or delivery code.
"""

import os

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from qmailtx import log

RUN_DIR = "run"
PID_FILE = "qmailtx.pid"
SOCKET = "ctl"
COMMAND_LIMIT = 64
"""Longest control command line."""
SETUP_RETRY = 60.0
"""Seconds between attempts to set up C{run/} after one failed (a full disk at start)."""


def runPath(root, name):
    return os.path.join(root, RUN_DIR, name)


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = COMMAND_LIMIT

    def lineReceived(self, line):
        sender = self.factory.sender
        word = line.strip().decode("ascii", "replace")
        if word == "stat":
            state = "paused" if sender.paused else "running"
            reply = (f"qmail-send: {state}, {len(sender.jobs)} messages, "
                     f"{sender.statusText()}")
        elif word == "pid":
            reply = f"pid {os.getpid()}"
        elif word in ("doqueue", "alrm", "flush"):
            sender.flush()
            reply = "ok: retrying deferred messages now"
        elif word in ("reload", "hup"):
            sender.reload()
            reply = "ok: locals and virtualdomains re-read"
        elif word == "pause":
            sender.pause()
            reply = "ok: deliveries paused"
        elif word == "cont":
            sender.resume()
            reply = "ok: deliveries continue"
        else:
            reply = f"error: unknown command {word!r}"
        self.sendLine(reply.encode())
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class ControlService(service.Service):
    """Writes the pid file and listens on the control socket while the daemon runs."""

    name = "ctl"

    def __init__(self, root, sender, reactor):
        self.root = root
        self.sender = sender
        self.reactor = reactor
        self.port = None
        self._retry = None
        self._failed = False

    def startService(self):
        service.Service.startService(self)
        self._setUp()

    def _setUp(self):
        """Pid file and socket; on trouble, warn once and try again every L{SETUP_RETRY}
        seconds, so that ctl reaches the daemon once the disk has room again."""
        self._retry = None
        run = os.path.join(self.root, RUN_DIR)
        tmp = runPath(self.root, PID_FILE + ".tmp")
        try:
            os.makedirs(run, 0o700, exist_ok=True)
            os.chmod(run, 0o700)
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.rename(tmp, runPath(self.root, PID_FILE))
            sock = runPath(self.root, SOCKET)
            if os.path.exists(sock):
                os.unlink(sock)
            factory = Factory.forProtocol(ControlProtocol)
            factory.sender = self.sender
            self.port = self.reactor.listenUNIX(sock, factory, mode=0o600)
        except (OSError, CannotListenError) as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not self._failed:
                why = getattr(e, "strerror", None) or str(e)
                log.warning(f"unable to set up {run}: {why}; qmailtx ctl will not reach "
                            f"this daemon until it can (trying every {SETUP_RETRY:.0f} s)")
            self._failed = True
            if self.running:
                self._retry = self.reactor.callLater(SETUP_RETRY, self._setUp)
            return
        if self._failed:
            self._failed = False
            log.event(f"{run} set up: qmailtx ctl reaches this daemon")

    def stopService(self):
        service.Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        try:
            os.unlink(runPath(self.root, PID_FILE))
        except OSError:
            pass
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
