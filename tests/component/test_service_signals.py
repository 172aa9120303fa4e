"""
The daemon's service tree catches SIGALRM and SIGHUP before its first listener binds: a
C{qmailctl doqueue} sent as soon as the SMTP port answers must not meet SIGALRM's default
action, which would kill the whole daemon.
"""

import os
import signal

import pytest
from twisted.internet.testing import MemoryReactorClock

from qmailtx.service import makeQmailService
from qmailtx.tap import Options


@pytest.fixture
def savedSignals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGALRM, signal.SIGHUP)}
    for sig in saved:
        signal.signal(sig, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_handlersBeforeListening(tmp_path, savedSignals, monkeypatch):
    """When each listener binds (privilegedStartService), SIGALRM and SIGHUP are already
    qmail-send's, although no service has been started yet."""
    from qmailtx import service as qmailservice

    seen = []
    bind = qmailservice.ListenerService.privilegedStartService

    def recordingBind(self):
        seen.append((self.kind, signal.getsignal(signal.SIGALRM),
                     signal.getsignal(signal.SIGHUP)))
        return bind(self)
    monkeypatch.setattr(qmailservice.ListenerService, "privilegedStartService", recordingBind)
    options = Options()
    options.parseOptions(["--root", str(tmp_path / "root"), "--smtp", "tcp:0",
                          "--qmtp", "tcp:0"])
    reactor = MemoryReactorClock()
    top = makeQmailService(options, reactor=reactor)
    top.privilegedStartService()
    assert [kind for kind, _, _ in seen] == ["smtp", "qmtp"]
    assert len(reactor.tcpServers) == 2
    for _, alrm, hup in seen:
        assert callable(alrm) and callable(hup)
    os.close(top.sender._mutexFd)


def test_hangupBeforeStartIsHarmless(tmp_path, savedSignals):
    """SIGHUP before qmail-send has read its controls changes nothing and raises nothing:
    its start reads them fresh anyway."""
    options = Options()
    options.parseOptions(["--root", str(tmp_path / "root"), "--smtp", "tcp:0"])
    top = makeQmailService(options, reactor=MemoryReactorClock())
    top.sender.reload()
    assert top.sender.config is None
    top.sender.privilegedStartService()
    assert top.sender.config is not None
    top.sender.reload()
    os.close(top.sender._mutexFd)
