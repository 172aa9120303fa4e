"""Shared fixtures: a fresh qmail root, a running daemon."""

import os

import pytest

from qmailtx.rootdir import createRoot


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: soak/bench runs kept out of the default run")
    # No test may reach beyond loopback: every resolver qmailtx makes (in-process or in a
    # daemon started from here) asks 127.0.0.1 only.
    import tempfile

    from tests.service.daemon import loopbackResolvConf

    os.environ["QMAILTX_RESOLV_CONF"] = loopbackResolvConf(tempfile.mkdtemp(prefix="qmailtx-dns-"))


@pytest.fixture
def qmailRoot(tmp_path):
    """A new qmail root made by `qmailtx init` logic, host name mx.example.com."""
    root = tmp_path / "root"
    createRoot(str(root), "mx.example.com")
    return root


@pytest.fixture
def daemon(qmailRoot):
    """A live `twistd -n qmail` on 127.0.0.1 with SMTP, stopped after the test."""
    from tests.service.daemon import Daemon

    d = Daemon(qmailRoot).start()
    yield d
    d.stop()


@pytest.fixture
def qmailLines():
    """Every qmail-style log line (L{qmailtx.log}) emitted during the test, in order."""
    from twisted.logger import globalLogPublisher

    seen = []

    def observer(event):
        if "qmail" in event:
            seen.append(event["qmail"])
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def logEvents():
    """Every log event emitted during the test, in order, as Twisted's dicts."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
