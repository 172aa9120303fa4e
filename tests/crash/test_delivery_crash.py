"""
SIGKILL during delivery (issue 3, spec/queue.md §3–8): while clients send and local
deliveries are in flight, the daemon is killed again and again and restarted.  Every message
that got its C{250} must reach the mailbox at least once, and the queue must end empty.
"""

import os
import smtplib
import tempfile
import threading
import time

import pytest

from tests.service.daemon import Daemon
from tests.service.test_delivery import ME, MailUser, Setup

CLIENTS = 10


def client(port, stop, tokens, accepted):
    """Send the tokens handed out by C{tokens} until none are left; record each 250."""
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                while not stop.is_set():
                    try:
                        token = tokens.pop()
                    except IndexError:
                        return
                    try:
                        s.sendmail("sender@example.org", ["joe-box@" + ME],
                                   f"Subject: {token}\r\nX-Crash-Id: {token}\r\n\r\n"
                                   f"{'x' * 900}\r\n")
                    except (OSError, smtplib.SMTPException):
                        tokens.append(token)
                        raise
                    accepted.add(token)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.02)


def delivered(maildir):
    seen = set()
    for name in os.listdir(maildir):
        with open(os.path.join(maildir, name), "rb") as f:
            for line in f:
                if line.startswith(b"X-Crash-Id: "):
                    seen.add(line[12:].strip().decode())
                    break
                if line == b"\n":
                    break
    return seen


def files(root, kind):
    out = set()
    for _, _, names in os.walk(os.path.join(root, "queue", kind)):
        out.update(names)
    return out


def queued(root):
    """Messages qmail-send still owes something: anything in todo/ or info/."""
    return len(files(root, "todo") | files(root, "info"))


def run(messages, kills, interval):
    user = MailUser()
    site = Setup(user, tempfile.mkdtemp(dir=user.base))
    site.dotqmail(".qmail-box", b"./Maildir/\n")
    daemon = Daemon(site.root)
    daemon.start()
    tokens = [f"m{i}" for i in range(messages)]
    accepted = set()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(daemon.port, stop, tokens, accepted))
               for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for _ in range(kills):
            time.sleep(interval)
            daemon.kill()
            daemon.start()
        for t in threads:
            t.join(120)
        maildir = os.path.join(site.home, "Maildir", "new")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (queued(site.root) or
                                               not accepted <= delivered(maildir)):
            time.sleep(0.2)
        missing = accepted - delivered(maildir)
        assert not missing, f"{len(missing)} accepted messages never delivered, e.g. " \
                            f"{sorted(missing)[:5]}; log {daemon.logPath}"
        assert queued(site.root) == 0
        assert not files(site.root, "local") and not files(site.root, "remote")
        # What may stay is a crashed injection (mess, maybe intd, never todo): qmail's
        # state S2/S3, removed by the 36-hour cleanup, never delivered.
        leftovers = files(site.root, "mess")
        assert files(site.root, "intd") <= leftovers
        assert len(leftovers) <= kills * (CLIENTS + 2), leftovers
        assert len(accepted) >= messages * 0.9
        return daemon.log()
    finally:
        stop.set()
        daemon.stop()
        user.close()


def test_killDuringDelivery():
    """The issue's run: 2,000 messages, 8 SIGKILLs while they are sent and delivered (about 20 s)."""
    log = run(2000, 8, 2.0)
    assert "starting delivery" in log


@pytest.mark.slow
def test_killDuringDeliveryOften():
    """A SIGKILL every half second through a 2,000-message run."""
    run(2000, 30, 0.5)
