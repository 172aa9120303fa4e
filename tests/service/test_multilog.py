"""
C{twistd -n --logger qmailtx.log.multilog qmail}: the daemon's output is qmail's bare log lines,
for a supervisor's multilog to timestamp; C{--logger qmailtx.log.stamped}: twistd's own
timestamped lines, written by qmailtx's cheaper observer.
"""

import re
import smtplib
import time

from tests.service.daemon import TWISTD, Daemon


class MultilogDaemon(Daemon):
    logger = "qmailtx.log.multilog"

    def command(self):
        cmd = Daemon.command(self)
        assert cmd[:2] == [TWISTD, "-n"]
        return cmd[:2] + ["--logger", self.logger] + cmd[2:]


class StampedDaemon(MultilogDaemon):
    logger = "qmailtx.log.stamped"


def sendOne(daemon):
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.sendmail("a@example.org", ["postmaster"], b"Subject: m\r\n\r\nx\r\n")
        deadline = time.monotonic() + 15
        while "info msg " not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
    finally:
        daemon.stop()
    return [line for line in daemon.log().splitlines() if line]


def test_bareQmailLines(qmailRoot):
    """Every output line is bare (no timestamp, no [system]); qmail-send's lines read as
    qmail's do, e.g. 'new msg N' and 'info msg N: bytes ...'."""
    lines = sendOne(MultilogDaemon(qmailRoot).start())
    assert not [line for line in lines if re.match(r"\d{4}-\d\d-\d\dT", line)], lines[:5]
    assert any(re.fullmatch(r"new msg \d+", line) for line in lines)
    assert any(re.fullmatch(r"info msg \d+: bytes \d+ from <a@example.org> qp \d+ uid \d+", line)
               for line in lines)


def test_stampedLines(qmailRoot):
    """Every output line has twistd's time stamp and [system]; qmail's lines follow them."""
    lines = sendOne(StampedDaemon(qmailRoot).start())
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^]]+\] "
    assert all(re.match(stamp, line) for line in lines), lines[:5]
    assert any(re.fullmatch(stamp + r"new msg \d+", line) for line in lines)
    assert any(re.fullmatch(stamp + r"info msg \d+: bytes \d+ from <a@example.org> qp \d+ "
                            r"uid \d+", line) for line in lines)
