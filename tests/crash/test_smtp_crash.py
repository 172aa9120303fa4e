"""
SIGKILL under load (DESIGN.md §4, spec/queue.md §3): the daemon says C{250} only once a
message is durable in C{todo/}, so killing it at any instant loses nothing it accepted and
leaves no half-written message where qmail-send would take it.
"""

import contextlib
import glob
import os
import re
import signal
import smtplib
import threading
import time

import pytest

from qmailtx.envelope import parseRecords
from tests.service.daemon import Daemon

CLIENTS = 20
RECIPIENT = "crash@remote.invalid"


def body(token, size):
    """A message whose last line names it, so a cut copy is recognisable."""
    lines = [f"Subject: crash {token}", f"X-Crash-Id: {token}", ""]
    lines += ["%s line %d %s" % (token, i, "x" * 60) for i in range(size)]
    lines.append(f"END {token}")
    return "\r\n".join(lines) + "\r\n"


def client(port, number, stop, accepted, refusals=None):
    """Send messages until stopped; record the token of each one that got 250 to DATA, and
    in C{refusals} the text of each refusal."""
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                while not stop.is_set():
                    token = f"c{number}m{n}"
                    n += 1
                    s.sendmail("sender@example.com", [RECIPIENT], body(token, 1 + (n * 37) % 300))
                    accepted.append(token)
        except smtplib.SMTPResponseException as e:
            if refusals is not None:
                refusals.append(e.smtp_error)
            time.sleep(0.01)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.01)


def queueContents(root):
    """Every mess file's bytes by id, and every todo file's records by id."""
    q = os.path.join(root, "queue")
    mess = {}
    for path in glob.glob(os.path.join(q, "mess", "*", "*")):
        with open(path, "rb") as f:
            mess[int(os.path.basename(path))] = f.read()
    todo = {}
    for path in glob.glob(os.path.join(q, "todo", "*")):
        with open(path, "rb") as f:
            todo[int(os.path.basename(path))] = f.read()
    return mess, todo


def tokenOf(data):
    for line in data.split(b"\n"):
        if line.startswith(b"X-Crash-Id: "):
            return line[12:].strip().decode()
    return None


def receiverPids(daemon, count, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = re.findall(r"receiver \d+: ready, pid (\d+)", daemon.log())
        if len(pids) >= count:
            return [int(p) for p in pids]
        time.sleep(0.05)
    raise AssertionError("receivers not ready: " + daemon.log()[-2000:])


@contextlib.contextmanager
def sending(daemon, receivers, atLeast, accepted, refusals=None):
    """
    CLIENTS clients sending to C{daemon} until C{atLeast} messages got 250; the block then
    ends the daemon (it is killed afterwards in any case) and the clients are stopped.
    Yields the receivers' pids.
    """
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(daemon.port, i, stop, accepted, refusals),
                                daemon=True)
               for i in range(CLIENTS)]
    try:
        pids = receiverPids(daemon, receivers) if receivers else []
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(accepted) < atLeast and time.monotonic() < deadline:
            time.sleep(0.05)
        yield pids
    finally:
        stop.set()
        daemon.kill()
        for t in threads:
            if t.ident is not None:
                t.join(15)
    assert len(accepted) >= atLeast, daemon.log()[-3000:]


@pytest.mark.parametrize("receivers", [0, 2])
def test_killUnderLoad(qmailRoot, receivers):
    """
    Kills the daemon with SIGKILL while 20 clients send (and, with --receivers, its receiver
    processes first, so they die mid-session rather than seeing the daemon go), restarts
    it, and shows every message that got 250 is in the queue intact and no half-written
    message is in todo/.
    """
    root = str(qmailRoot)
    daemon = Daemon(root, extra=["--receivers", str(receivers)]).start()
    accepted = []
    with sending(daemon, receivers, 100, accepted) as pids:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        daemon.kill()
    acceptedNow = set(accepted)

    mess, todo = queueContents(root)
    for msgid, data in todo.items():
        assert msgid in mess, f"todo/{msgid} without its message"
        if b" invoked for bounce); " in mess[msgid].split(b"\n", 1)[0]:
            continue  # the queue manager bounced a test message: not an SMTP injection
        token = tokenOf(mess[msgid])
        assert token is not None and mess[msgid].endswith(f"END {token}\n".encode()), \
            f"half-written message {msgid} in todo/"
        assert mess[msgid].startswith(b"Received: (qmail ")
        records = parseRecords(data)
        assert [r[0] for r in records] == [b"u", b"p", b"F", b"T"], records
        assert records[3][1] == RECIPIENT.encode()

    info = {int(os.path.basename(p)) for p in glob.glob(os.path.join(root, "queue", "info", "*", "*"))}
    whole = {tokenOf(data): data for msgid, data in mess.items()
             if (msgid in todo or msgid in info)
             and tokenOf(data) and data.endswith(f"END {tokenOf(data)}\n".encode())}
    missing = acceptedNow - set(whole)
    assert not missing, f"{len(missing)} accepted messages lost, e.g. {sorted(missing)[:5]}"
    for token in acceptedNow:
        size = int(token.split("m")[1]) + 1
        expected = body(token, 1 + (size * 37) % 300).replace("\r\n", "\n").encode()
        assert whole[token].endswith(expected)

    # Later the queue manager may move these messages on; what must hold is that the
    # killed root starts again and takes new mail.
    restarted = Daemon(root)
    try:
        restarted.start()
        with smtplib.SMTP("127.0.0.1", restarted.port, timeout=10) as s:
            s.sendmail("sender@example.com", [RECIPIENT], body("after", 3))
    finally:
        restarted.stop()
    mess, _ = queueContents(root)
    assert "after" in {tokenOf(data) for data in mess.values()}


@pytest.mark.parametrize("receivers", [0, 2])
def test_stopUnderLoad(qmailRoot, receivers):
    """
    SIGTERM while 20 clients send: a message whose todo/ link was made got its 250 before
    the connection closed (else the client's retry would queue it twice), nothing that got
    250 is lost, and a message or session caught by the stop is refused as a shutdown,
    not as a disk error.
    """
    root = str(qmailRoot)
    with open(os.path.join(root, "control", "concurrencyremote"), "w") as f:
        f.write("0\n")
    daemon = Daemon(root, extra=["--receivers", str(receivers)]).start()
    accepted, refusals = [], []
    with sending(daemon, receivers, 300, accepted, refusals):
        daemon.stop()
        assert daemon.process.returncode is not None
    mess, todo = queueContents(root)
    info = {int(os.path.basename(p)) for p in glob.glob(os.path.join(root, "queue", "info", "*", "*"))}
    queued = {tokenOf(data) for msgid, data in mess.items() if msgid in todo or msgid in info}
    queued.discard(None)
    acceptedNow = set(accepted)
    assert not acceptedNow - queued, "accepted messages lost"
    unanswered = queued - acceptedNow
    assert not unanswered, f"{len(unanswered)} queued messages never got their 250: {sorted(unanswered)[:5]}"
    # At its DATA's end a message hears qq shutting down; a session between messages
    # hears the stop's 421; either way a shutdown, never a disk error.
    assert all(text.endswith(b"shutting down, try again later (#4.3.2)")
               for text in refusals), refusals
    for trouble in ("Traceback", "Unhandled", "while calling from thread"):
        assert trouble not in daemon.log(), daemon.log()[-3000:]
