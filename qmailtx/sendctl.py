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
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from qmailtx import log

RUN_DIR = "run"
PID_FILE = "qmailtx.pid"
SOCKET = "ctl"
COMMAND_LIMIT = 64
"""Longest control command line."""


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

    def startService(self):
        service.Service.startService(self)
        run = os.path.join(self.root, RUN_DIR)
        try:
            os.makedirs(run, 0o700, exist_ok=True)
            os.chmod(run, 0o700)
            tmp = runPath(self.root, PID_FILE + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.rename(tmp, runPath(self.root, PID_FILE))
            sock = runPath(self.root, SOCKET)
            if os.path.exists(sock):
                os.unlink(sock)
            factory = Factory.forProtocol(ControlProtocol)
            factory.sender = self.sender
            self.port = self.reactor.listenUNIX(sock, factory, mode=0o600)
        except OSError as e:
            log.warning(f"unable to set up {run}: {e.strerror}; qmailtx ctl will not reach "
                        "this daemon")

    def stopService(self):
        service.Service.stopService(self)
        try:
            os.unlink(runPath(self.root, PID_FILE))
        except OSError:
            pass
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
