"""
C{twistd qmail} told to stop while a message is still being queued: the stop waits for it,
and a second SIGTERM or SIGINT meanwhile (an impatient operator, a supervisor's retry) is
heard without disturbing the drain.
"""

import contextlib
import signal
import smtplib
import threading
import time

import pytest

from tests.service.daemon import Daemon
from tests.service.test_smtp_service import RawClient


def waitFor(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextlib.contextmanager
def stoppable(qmailRoot, receivers):
    """A daemon with C{receivers} receiver processes, ready; stopped (if still running) when
    the block ends, however it ends."""
    d = Daemon(qmailRoot, extra=["--receivers", str(receivers)]).start()
    try:
        if receivers:
            waitFor(lambda: "receiver 1: ready" in d.log())
        yield d
    finally:
        d.stop()


def test_secondSignalDuringTheDrain(qmailRoot, tmp_path):
    """
    The queue program holds the message's commit open until the test lets it go; SIGTERM
    and SIGINT arrive back to back (the second before the stop has begun), then SIGTERM
    again during the drain.  The client still gets its 250, the daemon ends as the first
    signal asked (twistd's way), and the log says the stop is under way instead of Twisted's
    ReactorNotRunning traceback.
    """
    go = tmp_path / "go"
    started = tmp_path / "started"
    program = tmp_path / "qq"
    program.write_text(
        "#!/bin/sh\ncat >/dev/null\ncat <&1 >/dev/null\n"
        f"touch {started}\nwhile [ ! -e {go} ]; do sleep 0.02; done\nexit 0\n")
    program.chmod(0o755)
    (qmailRoot / "rules" / "smtp").write_text(
        f'127.0.0.1:allow,RELAYCLIENT="",QMAILQUEUE="{program}"\n')
    d = Daemon(qmailRoot).start()
    replies = []

    def send():
        s = smtplib.SMTP("127.0.0.1", d.port)
        s.ehlo()
        s.mail("a@b.example")
        s.rcpt("c@d.example")
        replies.append(s.data(b"Subject: held\r\n\r\nhi\r\n"))
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the stopping daemon may say its 421 before the QUIT is read
        s.close()

    client = threading.Thread(target=send)
    try:
        client.start()
        waitFor(started.exists)
        d.process.send_signal(signal.SIGTERM)
        d.process.send_signal(signal.SIGINT)
        waitFor(lambda: d.log().count("already stopping") >= 1)
        d.process.send_signal(signal.SIGTERM)
        waitFor(lambda: d.log().count("already stopping") >= 2)
        assert d.process.poll() is None
        go.touch()
        client.join(15)
        assert d.process.wait(15) in (-signal.SIGTERM, -signal.SIGINT)
    finally:
        go.touch()
        d.stop()
    log = d.log()
    assert replies and replies[0][0] == 250, (replies, log[-2000:])
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log[-3000:]


@pytest.mark.parametrize("receivers", [0, 1], ids=["daemon", "receiver"])
def test_messageArrivingAtTheStopIsAnswered(qmailRoot, receivers):
    """
    SIGTERM while a client is in the middle of DATA, with nothing else in flight: the stop
    waits for the message's end and answers it 451 qq shutting down, as the README says,
    instead of dropping the connection (the client would not know whether it was queued).
    """
    with stoppable(qmailRoot, receivers) as d:
        c = RawClient(d.port)
        assert c.line().startswith(b"220 ")
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\n")
        assert [c.line() for _ in range(3)] == [b"250 ok", b"250 ok", b"354 go ahead"]
        c.send(b"Subject: half\r\n\r\nfirst part\r\n")
        time.sleep(0.2)
        d.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        c.send(b"second part\r\n.\r\n")
        assert c.line() == b"451 qq shutting down, try again later (#4.3.2)"
        assert d.process.wait(15) == -signal.SIGTERM
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("receivers", [0, 1], ids=["daemon", "receiver"])
def test_idleSessionsHear421AtTheStop(qmailRoot, receivers):
    """
    SIGTERM with sessions open but nothing arriving: each hears a 421 before its connection
    closes (RFC 5321 §3.8: a server forcibly shut down SHOULD try to send one), whether it
    sits after the greeting or inside a transaction, instead of a dropped connection.
    """
    with stoppable(qmailRoot, receivers) as d:
        greeted = RawClient(d.port)
        assert greeted.line().startswith(b"220 ")
        inMail = RawClient(d.port)
        assert inMail.line().startswith(b"220 ")
        inMail.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster@mx.example.com>\r\n")
        assert [inMail.line() for _ in range(2)] == [b"250 ok", b"250 ok"]
        d.process.send_signal(signal.SIGTERM)
        for c in (greeted, inMail):
            assert c.line() == b"421 mx.example.com shutting down, try again later (#4.3.2)"
            assert c.closed()
        assert d.process.wait(15) == -signal.SIGTERM
    assert "Traceback" not in d.log()
