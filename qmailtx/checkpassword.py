"""
The checkpassword interface (spec/pop3.md §2), from the caller's side.

L{checkPassword} runs any checkpassword-compatible program (checkpassword, checkpassword-pam,
vchkpw, C{qmailtx checkpassword}) in a subprocess: C{login\\0password\\0timestamp\\0} on fd 3,
an environment built from nothing, a kill timeout.  As the "next program" it gives
L{REPORT_PROGRAM}, which prints C{HOME}, C{USER}, uid and gid NUL-terminated on stdout and
exits 0, so the caller learns who the program made it without running any mail code in the
checker's process; SMTP AUTH, which needs only the verdict, gives C{/bin/true} instead
(L{VERDICT_PROGRAM}).  Used by POP3 and SMTP AUTH.  Writes nothing; switches no uid itself
(the checker does); must not import protocols.
"""

import os
from dataclasses import dataclass

from twisted.internet import defer, protocol

from qmailtx import log
from qmailtx.children import killChild
from qmailtx.results import PermFailure, TempFailure

FD3_LIMIT = 512
"""The interface says a checker reads at most 512 bytes from fd 3."""

REPORT_LIMIT = 8192
"""Bytes of the next program's report we keep; more is a misbehaving checker."""

CHECK_TIMEOUT = 60.0
"""Seconds a checker may run before it is killed (a crash for the caller)."""

REPORT_PROGRAM = [
    b"/bin/sh", b"-c",
    b'printf "%s\\0%s\\0" "$HOME" "$USER"\n'
    b'if [ -r /proc/self/status ]; then\n'
    b'  while read -r k a b; do case $k in Uid:) printf "%s\\0" "$a";;'
    b' Gid:) printf "%s\\0" "$a"; break;; esac; done < /proc/self/status\n'
    b'else printf "%s\\0%s\\0" "$(id -u)" "$(id -g)"; fi\n',
]
"""The next program: reports who checkpassword made it.  The shell reads its own uid/gid from
/proc (no further process; C{id} where /proc is missing), so a login costs one short-lived
shell, where an interpreter would cost tens of milliseconds.  It stops reading at the Gid
line (the tenth): the shell's read builtin takes a byte per system call, and reading the
whole file doubled the shell's CPU time."""

VERDICT_PROGRAM = [b"/bin/true"]
"""The next program when only the checker's verdict matters (SMTP AUTH), as qmail sites
run qmail-smtpd's AUTH: C{checkpassword /bin/true}."""

DEFAULT_PATH = b"/usr/local/bin:/usr/bin:/bin"

AUTH_FAILED = b"authorization failed"
CRASHED = b"aack, child crashed"
NO_FORK = b"unable to fork"
NO_REPORT = b"unable to read checkpassword report"


@dataclass(frozen=True)
class Authenticated:
    """Who the checker made us: C{USER} and C{HOME} as it set them, the uid/gid it ran as."""

    user: bytes
    home: bytes
    uid: int
    gid: int


@dataclass(frozen=True)
class Refused(PermFailure):
    """The checker exited non-zero (1 bad password, 2 misuse, 111 temporary problem)."""

    status: int = 1


def fd3Data(login, password, challenge):
    """The fd-3 bytes: login, password and timestamp, each NUL-terminated."""
    return login + b"\0" + password + b"\0" + challenge + b"\0"


def parseReport(data, login):
    """
    L{Authenticated} from the report program's output, or C{None} if it is malformed.
    An empty C{USER} falls back to the login name.
    """
    fields = data.split(b"\0")
    if len(fields) != 5 or fields[4] != b"":
        return None
    home, user, uid, gid = fields[:4]
    if not (uid.isdigit() and gid.isdigit()):
        return None
    return Authenticated(user or login, home, int(uid), int(gid))


class _CheckerProtocol(protocol.ProcessProtocol):
    def __init__(self, fd3, login, deferred, clock, timeout, report=True):
        self.fd3 = fd3
        self.wantReport = report
        self.login = login
        self.deferred = deferred
        self.clock = clock
        self.timeout = timeout
        self.report = []
        self.reportSize = 0
        self.killer = None

    def connectionMade(self):
        self.transport.writeToChild(3, self.fd3)
        self.transport.closeChildFD(3)
        self.killer = self.clock.callLater(self.timeout, self._kill)

    def _kill(self):
        self.killer = None
        killChild(self.transport)

    def childDataReceived(self, fd, data):
        if fd == 1 and self.reportSize < REPORT_LIMIT:
            self.report.append(data)
            self.reportSize += len(data)

    def cancel(self, deferred):
        """The caller gave up (its client hung up): no checker outlives its session."""
        killChild(self.transport)

    def processEnded(self, reason):
        if self.killer is not None:
            self.killer.cancel()
            self.killer = None
        if self.deferred.called:
            return  # cancelled
        value = reason.value
        if getattr(value, "signal", None) is not None:
            self.deferred.errback(TempFailure(CRASHED))
        elif getattr(value, "exitCode", 0):
            self.deferred.errback(Refused(AUTH_FAILED, value.exitCode))
        elif not self.wantReport:
            self.deferred.callback(None)
        else:
            found = parseReport(b"".join(self.report), self.login)
            if found is None:
                self.deferred.errback(TempFailure(NO_REPORT))
            else:
                self.deferred.callback(found)


def checkPassword(reactor, program, login, password, challenge,
                  timeout=CHECK_TIMEOUT, env=None, report=True):
    """
    Run C{program} (argv list of bytes) as a checkpassword program.

    @param env: extra environment (bytes to bytes) for the checker, e.g. TCPREMOTEIP;
        C{PATH} defaults to L{DEFAULT_PATH}.  Nothing of the daemon's own leaks in.
    @param report: whether the caller needs L{Authenticated} (POP3 does: the mailbox is
        the checker's HOME, opened as its uid).  Without it the next program is
        L{VERDICT_PROGRAM} and exit 0 alone is success, as for qmail-smtpd's AUTH.
    @return: L{Deferred} firing with L{Authenticated} (C{None} without C{report}); failing
        with L{Refused} (exit non-zero, or a field holding a NUL) or L{TempFailure}
        (killed, timed out, cannot spawn, no report).  Cancelling it kills the checker.
    """
    if b"\0" in login or b"\0" in password or b"\0" in challenge:
        # The field would end at the NUL and the rest become the next field.
        return defer.fail(Refused(AUTH_FAILED, 2))
    data = fd3Data(login, password, challenge)
    if len(data) > FD3_LIMIT:
        return defer.fail(Refused(AUTH_FAILED, 2))
    childEnv = {b"PATH": DEFAULT_PATH}
    childEnv.update(env or {})
    proto = _CheckerProtocol(data, login, None, reactor, timeout, report)
    d = proto.deferred = defer.Deferred(proto.cancel)
    try:
        quiet = _devNull()
        reactor.spawnProcess(
            proto, program[0], list(program) + (REPORT_PROGRAM if report else VERDICT_PROGRAM),
            env=childEnv,
            childFDs={0: quiet, 1: "r", 2: quiet, 3: "w"},
        )
    except Exception as e:
        # smtp.md: "454 ... child won't start"; pop3.md: "-ERR unable to fork".  The client
        # hears a temporary failure; the operator needs the reason.
        log.warning(f"checkpassword: unable to run {log.logsafe(program[0])}: "
                    f"{getattr(e, 'strerror', None) or e}")
        return defer.fail(TempFailure(NO_FORK))
    return d


_quiet = []


def _devNull():
    """
    One descriptor on /dev/null, kept open, for the checker's stdin (it reads fd 3, never
    stdin) and stderr (nothing reads it): two pipes fewer to make, watch and close per login.
    """
    if not _quiet:
        _quiet.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return _quiet[0]
