"""
The servers the benchmark compares, and the registry that names them.

A peer starts one server of its kind from a clean directory of its own under the run's work
directory, listens only on 127.0.0.1, and stops it again.  Adding a peer is one subclass of
L{Peer} decorated with L{registerPeer}; the order of registration is the order of the table's
columns, so qmailtx comes first.

Writes only below the work directory it is given.  Must not import qmailtx: peers are driven
from outside, as their users would drive them.
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.memory import processTree

BENCH_DOMAIN = "bench.local"
RECIPIENT = "rcpt@" + BENCH_DOMAIN

#: How long a peer may take to answer its first connection.
START_TIMEOUT = 60.0
#: How long a peer may take to exit once asked to stop.
STOP_TIMEOUT = 30.0

PEERS = {}


def registerPeer(cls):
    """
    Add a peer class to L{PEERS} under its C{name}; a decorator.
    """
    PEERS[cls.name] = cls
    return cls


def freePort():
    """
    Pick an unused TCP port on 127.0.0.1.

    The port is free when this returns, not reserved: good enough for one bench run on one host.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raiseFileLimit():
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit; children inherit it.

    @return: the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def readBanner(address, timeout=2.0):
    """
    Connect and read the first reply line; C{None} when nothing answers.
    """
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            return s.recv(512)
    except OSError:
        return None


class PeerUnavailable(Exception):
    """
    A peer cannot run here (a program is missing, or it did not answer); the reason is the text.
    """


class Peer:
    """
    One server under test.

    @cvar name: the column name.
    @cvar description: what exactly runs, for the report.
    @ivar directory: this peer's private directory, created fresh by L{start}.
    @ivar address: C{(host, port)} of its SMTP listener once started.
    """

    name = None
    description = ""

    def __init__(self, workdir, log=print):
        self.workdir = Path(workdir)
        self.directory = self.workdir / self.name
        self.address = None
        self.process = None
        self.log = log

    def missing(self):
        """
        @return: why this peer cannot run here, or C{None} if it can.
        """
        return None

    def version(self):
        """
        @return: the version text of the server, for the JSON record.
        """
        return ""

    def prepare(self, port):
        """
        Build the peer's directory for a server on C{port}.
        """

    def command(self, port):
        """
        @return: C{(argv, env)} of the server process; env C{None} inherits ours.
        """
        raise NotImplementedError

    def start(self):
        """
        Start from a clean directory and wait until the listener greets.

        @raise PeerUnavailable: if it does not answer within L{START_TIMEOUT}.
        """
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        os.chmod(self.directory, 0o755)
        port = freePort()
        self.prepare(port)
        argv, env = self.command(port)
        self.output = open(self.directory / "server.out", "wb")
        self.process = subprocess.Popen(
            argv, env=env, cwd=self.directory, stdin=subprocess.DEVNULL,
            stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = ("127.0.0.1", port)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            banner = readBanner(self.address)
            if banner and banner.startswith(b"220"):
                return
            time.sleep(0.2)
        self.stop()
        tail = (self.directory / "server.out").read_bytes()[-2000:].decode("utf-8", "replace")
        raise PeerUnavailable(f"{self.name} did not greet on {self.address}: {tail.strip()}")

    def stop(self):
        """
        Ask the server to exit (SIGTERM), then kill what is left of its process group.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self.output.close()

    def restart(self):
        """
        Stop, and start again from a clean directory.
        """
        self.stop()
        self.start()

    def pids(self):
        """
        @return: every process of this server (the started one and its descendants).
        """
        if self.process is None:
            return []
        return processTree(self.process.pid)

    def storedCount(self):
        """
        @return: how many accepted messages this server holds on disk.
        """
        raise NotImplementedError


def countFiles(directory):
    """
    @return: the number of regular files below C{directory}.
    """
    return sum(len(files) for _, _, files in os.walk(directory))


from bench.peers import qmailtx, postfix, aiosmtpd  # noqa: E402,F401  (registration order)
