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
