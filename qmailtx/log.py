"""
qmail-log event lines through C{twisted.logger}.

Lines are formatted in qmail's own vocabulary (C{new msg N}, C{info msg N: bytes ...}) so
that existing qmail log tools can read them; text fields pass through L{logsafe}.  Decides
nothing.
"""

import re

from twisted.logger import ILogObserver, Logger, formatEventAsClassicLogText, formatTime
from zope.interface import implementer

_log = Logger(namespace="qmailtx")


_LOGSAFE = bytes(47 if b == 10 else 95 if b < 33 or b > 126 or b == 37 else b
                 for b in range(256))


def logsafe(text):
    """qmail-send's logsafe: C{\\n} to C{/}; bytes < 33, > 126 and C{%} to C{_}."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    return text.translate(_LOGSAFE).decode("ascii")


def event(line, **fields):
    """Emit one qmail-style log line (C{line} is already formatted)."""
    _log.info("{qmail}", qmail=line, **fields)


def warning(line, **fields):
    _log.warn("{qmail}", qmail="warning: " + line, **fields)


def alert(line, **fields):
    _log.critical("{qmail}", qmail="alert: " + line, **fields)


def newMessage(msgid):
    event(f"new msg {msgid}")


def infoMessage(msgid, size, sender, qp, uid):
    event(f"info msg {msgid}: bytes {size} from <{logsafe(sender)}> qp {qp} uid {uid}")


def _qmailLine(event):
    """The text of a qmail event (emitted by L{event} and friends), else C{None}."""
    text = event.get("qmail")
    if text is None or event.get("log_format") != "{qmail}" or "\n" in text:
        return None
    return text


_DNS_PORT_CHURN = re.compile(
    r"(?:\[[^]]*\] )?(?:DNSDatagramProtocol starting on \d+|\(UDP Port \d+ Closed\))\n?")
"""What Twisted logs, unconditionally, as twisted.names opens and closes the fresh UDP port
of each DNS query (Twisted #4021): two lines per lookup, none of them a qmail line."""


def _churn(text):
    return _DNS_PORT_CHURN.fullmatch(text) is not None


@implementer(ILogObserver)
class StampedObserver:
    """
    twistd's own text lines (C{2026-11-22T01:38:19+0000 [qmailtx#info] new msg 1}), byte
    for byte, at about a third of the cost per qmail line: twistd's observer formats the
    time and the line anew for each event, which in a daemon logging seven lines a message
    was a quarter of its CPU.  Here the time stamp is formatted once a second and a qmail
    line needs no formatting pass; every other event is formatted by Twisted.  Run as
    C{twistd -n --logger qmailtx.log.stamped qmail ...}.
    """

    def __init__(self, stream):
        self.stream = stream
        self._stamped = (None, "-")

    def __call__(self, event):
        text = _qmailLine(event)
        if text is None:
            line = formatEventAsClassicLogText(event)
            if not line or _churn(line.split(" ", 1)[-1]):
                return
        else:
            when = event.get("log_time")
            second = None if when is None else int(when // 1)
            stamped = self._stamped
            if second != stamped[0]:
                stamped = self._stamped = (second, formatTime(second))
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
            line = f"{stamped[1]} [{system}] {text}\n"
        self.stream.write(line)
        self.stream.flush()


def stamped():
    """twistd's C{--logger} factory for L{StampedObserver} on standard output."""
    import sys

    return StampedObserver(sys.stdout)


@implementer(ILogObserver)
class MultilogObserver:
    """
    Log lines as qmail's programs write them, for multilog (or svlogd, s6-log) to stamp:
    one bare line per event on standard output, no timestamp or system prefix.  Run as
    C{twistd -n --logger qmailtx.log.multilog qmail ...} under a supervisor whose log
    service adds the time.  qmail lines are written as they are (no formatting pass);
    other events, warnings and tracebacks included, as Twisted formats them, on one line.
    """

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event):
        text = _qmailLine(event)
        if text is None:
            from twisted.logger import eventAsText

            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
            if not text or _churn(text):
                return
            text = text.replace("\n", " / ")
        self.stream.write(text + "\n")
        self.stream.flush()


def multilog():
    """twistd's C{--logger} factory for L{MultilogObserver} on standard output."""
    import sys

    return MultilogObserver(sys.stdout)
