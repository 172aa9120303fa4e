"""
The README's set-up: `twistd -n qmail` with no options creates ./qmail-root, listens on
127.0.0.1:2525, and a first message to postmaster is delivered into alias/Maildir.
"""

import glob
import os
import pathlib
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from tests.service.daemon import REPO, TWISTD, waitForPort


@pytest.fixture
def workdir():
    """A working directory the alias user can reach (pytest's own tmp is root-only)."""
    path = tempfile.mkdtemp(prefix="qmailtx-embedded-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_default_end_to_end(workdir):
    """No options: root created in the working directory, SMTP on 2525, postmaster mail delivered."""
    tmp_path = workdir
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 2525)) != 0, "127.0.0.1:2525 is taken by another program"
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(tmp_path / "twistd.log", "wb")
    process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "qmail"], cwd=tmp_path, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        waitForPort(2525, process=process)
        root = tmp_path / "qmail-root"
        assert (root / "control" / "me").exists() and (root / "queue" / "todo").is_dir()
        me = (root / "control" / "me").read_text().strip()
        with smtplib.SMTP("127.0.0.1", 2525) as s:
            s.sendmail("you@example.org", ["postmaster@" + me], b"Subject: hi\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not glob.glob(str(root / "alias/Maildir/new/*")):
            time.sleep(0.1)
        (delivered,) = glob.glob(str(root / "alias/Maildir/new/*"))
        with open(delivered, "rb") as f:
            data = f.read()
        assert data.startswith(b"Return-Path: <you@example.org>\nDelivered-To: ")
        assert data.endswith(b"Subject: hi\n\nhello\n")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        log.close()
    assert b"status: exiting" in (tmp_path / "twistd.log").read_bytes()
