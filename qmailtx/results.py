"""
Outcomes as values: success, temporary failure, permanent failure.

qmail spells the same three outcomes four ways (SMTP 2xx/4xx/5xx, exit 0/111/100, report
letters K/Z/D, and the D/Z first byte of a queue error text).  Everything that crosses a
boundary in qmailtx carries one of the classes below, and the spellings are derived here
and nowhere else.  Pure: no I/O.
"""

from dataclasses import dataclass


EXIT_OK = 0
EXIT_PERM = 100
EXIT_TEMP = 111


@dataclass(frozen=True)
class Delivered:
    """The work is done (SMTP 250, exit 0, report K)."""

    text: bytes = b""
    letter = b"K"
    exitCode = EXIT_OK
    permanent = False
    temporary = False


@dataclass(frozen=True)
class TempFailure(Exception):
    """Try again later (SMTP 4xx, exit 111, report Z).  Unknown failure is temporary."""

    text: bytes
    letter = b"Z"
    exitCode = EXIT_TEMP
    permanent = False
    temporary = True

    def __str__(self):
        return self.text.decode("utf-8", "replace")


@dataclass(frozen=True)
class PermFailure(Exception):
    """Never retry (SMTP 5xx, exit 100, report D).  Needs an explicit decision."""

    text: bytes
    letter = b"D"
    exitCode = EXIT_PERM
    permanent = True
    temporary = False

    def __str__(self):
        return self.text.decode("utf-8", "replace")


class StartRefused(Exception):
    """
    A service of the daemon cannot start (its alert is already logged): twistd's run
    exits 111 (L{qmailtx.service.QmailService}) rather than run half-built.
    """


def fromReport(report):
    """
    Parse a qmail-style error text whose first byte is the letter (C{b"Dtext"},
    C{b"Ztext"}); anything but C{D} is temporary, as qmail's callers decide.
    """
    if report[:1] == b"D":
        return PermFailure(report[1:])
    if report[:1] == b"K":
        return Delivered(report[1:])
    return TempFailure(report[1:] if report[:1] == b"Z" else report)


def smtpReply(failure):
    """
    The SMTP reply line (without CRLF) after the final dot for a queue failure:
    C{554 text} when permanent, C{451 text} when temporary (qmail-smtpd's C{err_qqt} family).
    """
    return (b"554 " if failure.permanent else b"451 ") + failure.text


# qmail.c's qmail_close(): queue program exit code -> the error text callers show.
_QQ_EXIT_TEXTS = {
    11: b"Denvelope address too long for qq (#5.1.3)",
    115: b"Denvelope address too long for qq (#5.1.3)",
    31: b"Dmail server permanently rejected message (#5.3.0)",
    51: b"Zqq out of memory (#4.3.0)",
    52: b"Zqq timeout (#4.3.0)",
    53: b"Zqq write error or disk full (#4.3.0)",
    54: b"Zqq read error (#4.3.0)",
    55: b"Zqq unable to read configuration (#4.3.0)",
    56: b"Zqq trouble making network connection (#4.3.0)",
    61: b"Zqq trouble in home directory (#4.3.0)",
    62: b"Zqq trouble creating files in queue (#4.3.0)",
    63: b"Zqq trouble creating files in queue (#4.3.0)",
    64: b"Zqq trouble creating files in queue (#4.3.0)",
    65: b"Zqq trouble creating files in queue (#4.3.0)",
    66: b"Zqq trouble creating files in queue (#4.3.0)",
    71: b"Zmail server temporarily rejected message (#4.3.0)",
    72: b"Zconnection to mail server timed out (#4.4.1)",
    73: b"Zconnection to mail server rejected (#4.4.1)",
    74: b"Zcommunication with mail server failed (#4.4.2)",
    81: b"Zqq internal bug (#4.3.0)",
    91: b"Zqq internal bug (#4.3.0)",
    120: b"Zunable to exec qq (#4.3.0)",
}

QQ_CRASHED = b"Zqq crashed (#4.3.0)"
QQ_SHUTTING_DOWN = b"Zqq shutting down, try again later (#4.3.2)"
"""A daemon that is stopping takes no new message (L{qmailtx.commits.Commits.close}); a queue
program reports it as exit 71, qmail's "temporarily rejected"."""
QQ_READ_ERROR = b"Zqq read error (#4.3.0)"


def qqExitReport(code, customText=b""):
    """
    The D/Z report for a queue program's exit code, as qmail.c words it; C{None} for 0.
    C{customText} is what a notqmail 1.09 queue program wrote to fd 6 (used with exit 82).
    """
    if code == 0:
        return None
    if code == 82:
        if len(customText) > 2:
            return customText[:255]
        return b"Zqq temporary problem (#4.3.0)"
    if code in _QQ_EXIT_TEXTS:
        return _QQ_EXIT_TEXTS[code]
    if 11 <= code <= 40:
        return b"Dqq permanent problem (#5.3.0)"
    return b"Zqq temporary problem (#4.3.0)"


def qqExitFailure(code, customText=b""):
    """L{qqExitReport} as a failure value, or C{None} for success."""
    report = qqExitReport(code, customText)
    return None if report is None else fromReport(report)


_REPORT_EXIT_CODES = {}
for _code, _text in sorted(_QQ_EXIT_TEXTS.items()):
    _REPORT_EXIT_CODES.setdefault(_text, _code)
_REPORT_EXIT_CODES[QQ_SHUTTING_DOWN] = 71


def qqExitCode(failure):
    """
    The exit code a queue program uses to report C{failure}: the code whose qmail text
    matches, else 31 (permanent) or 81 (temporary).
    """
    code = _REPORT_EXIT_CODES.get(failure.letter + failure.text)
    if code is not None:
        return code
    return 31 if failure.permanent else 81
