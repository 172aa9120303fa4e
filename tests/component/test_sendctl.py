"""
The control service's set-up of C{run/} (pid file and ctl socket): a failure at start (a
full disk, a blocked path) is retried, so that ctl reaches the daemon once it can.
"""

import os

from twisted.internet.testing import MemoryReactorClock

from qmailtx.sendctl import PID_FILE, SETUP_RETRY, SOCKET, ControlService, runPath


def test_runSetUpRetriedAfterFailure(tmp_path, qmailLines):
    """run/ blocked at start: one warning, no leftover, and once it can be made, the pid
    file and the socket follow within SETUP_RETRY seconds, said in one line."""
    root = str(tmp_path)
    (tmp_path / "run").write_bytes(b"in the way")
    reactor = MemoryReactorClock()
    ctl = ControlService(root, sender=None, reactor=reactor)
    ctl.startService()
    assert reactor.unixServers == []
    assert [line for line in qmailLines if "unable to set up" in line] == [
        f"warning: unable to set up {root}/run: File exists; qmailtx ctl will not reach this "
        f"daemon until it can (trying every {SETUP_RETRY:.0f} s)"]
    reactor.advance(SETUP_RETRY)
    assert reactor.unixServers == [] and len(qmailLines) == 1
    os.unlink(tmp_path / "run")
    reactor.advance(SETUP_RETRY)
    assert [server[0] for server in reactor.unixServers] == [runPath(root, SOCKET)]
    with open(runPath(root, PID_FILE)) as f:
        assert f.read() == f"{os.getpid()}\n"
    assert qmailLines[-1] == f"{root}/run set up: qmailtx ctl reaches this daemon"
    assert os.listdir(tmp_path / "run") == [PID_FILE]
    ctl.stopService()
    assert reactor.getDelayedCalls() == []


def test_noRetryAfterStop(tmp_path):
    """A daemon stopping while run/ is still unusable leaves no retry behind."""
    (tmp_path / "run").write_bytes(b"in the way")
    reactor = MemoryReactorClock()
    ctl = ControlService(str(tmp_path), sender=None, reactor=reactor)
    ctl.startService()
    assert len(reactor.getDelayedCalls()) == 1
    ctl.stopService()
    assert reactor.getDelayedCalls() == []
