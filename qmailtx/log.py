"""
qmail-log event lines through C{twisted.logger}.

Lines are formatted in qmail's own vocabulary (C{new msg N}, C{info msg N: bytes ...}) so
that existing qmail log tools can read them; text fields pass through L{logsafe}.  Decides
nothing.
"""

from twisted.logger import Logger

_log = Logger(namespace="qmailtx")


def logsafe(text):
    """qmail-send's logsafe: C{\\n} to C{/}; bytes < 33, > 126 and C{%} to C{_}."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    return "".join(
        "/" if b == 10 else "_" if b < 33 or b > 126 or b == 37 else chr(b) for b in text
    )


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
        text = event.get("qmail")
        if text is None or event.get("log_format") != "{qmail}":
            from twisted.logger import eventAsText

            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
            if not text:
                return
            text = text.replace("\n", " / ")
        self.stream.write(text + "\n")
        self.stream.flush()


def multilog():
    """twistd's C{--logger} factory for L{MultilogObserver} on standard output."""
    import sys

    return MultilogObserver(sys.stdout)
