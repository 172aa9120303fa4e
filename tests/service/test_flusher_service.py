"""
The flusher processes of a running C{twistd qmail}: the daemon and each receiver start one,
and mail keeps being accepted and delivered into the queue when one dies (the daemon
says so and flushes in threads); stopping the daemon ends them.
"""

import os
import signal
import smtplib

import pytest

from qmailtx.scripts.main import main as qmailtx
from tests.service.daemon import Daemon
from tests.service.test_receivers import alive, waitFor


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(entry), argv))
    return out


def flusherOf(pid):
    found = [child for child, argv in children(pid) if b"flusher" in argv]
    return found[0] if found else None


def receiverOf(pid):
    found = [child for child, argv in children(pid) if b"receiver" in argv]
    return found[0] if found else None


def send(daemon, n):
    for i in range(n):
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.sendmail("a@example.org", ["postmaster@flusher.test"],
                            b"Subject: f%d\r\n\r\nbody\r\n" % i)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    assert qmailtx(["qmailtx", "init", str(root), "--me", "flusher.test"]) == 0
    (root / "control" / "concurrencylocal").write_text("0\n")
    return root


def test_flushersComeAndGoAndMailSurvivesTheirDeath(root):
    """Killed flushers are noticed, and mail is still accepted and preprocessed after."""
    daemon = Daemon(root, ("smtp",), ["--receivers", "1"]).start()
    try:
        pid = daemon.process.pid
        daemonFlusher = waitFor(lambda: flusherOf(pid))
        receiver = waitFor(lambda: receiverOf(pid))
        receiverFlusher = waitFor(lambda: flusherOf(receiver))
        send(daemon, 3)
        waitFor(lambda: daemon.log().count("new msg ") >= 3)
        os.kill(receiverFlusher, signal.SIGKILL)
        os.kill(daemonFlusher, signal.SIGKILL)
        waitFor(lambda: daemon.log().count("the flusher ended") >= 2)
        send(daemon, 3)
        waitFor(lambda: daemon.log().count("new msg ") >= 6)
        assert len(os.listdir(root / "queue" / "info" / "0")) + sum(
            len(os.listdir(root / "queue" / "info" / str(i))) for i in range(1, 23)) == 6
    finally:
        daemon.stop()


def test_stoppingTheDaemonEndsItsFlushers(root):
    """A clean stop ends both flushers without a word of a flusher that died."""
    daemon = Daemon(root, ("smtp",), ["--receivers", "1"]).start()
    try:
        pid = daemon.process.pid
        flushers = [waitFor(lambda: flusherOf(pid))]
        flushers.append(waitFor(lambda: flusherOf(waitFor(lambda: receiverOf(pid)))))
        assert all(alive(f) for f in flushers)
        send(daemon, 1)
    finally:
        daemon.stop()
    waitFor(lambda: not any(alive(f) for f in flushers), timeout=10)
    assert "the flusher ended" not in daemon.log()
