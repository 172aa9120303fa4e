"""
The checkpassword contract from the caller's side (spec/pop3.md §2): fd-3 data, exit codes,
the next program's report, crashes and the kill timeout.
"""

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from qmailtx import checkpassword
from qmailtx.results import PermFailure, TempFailure

CHECKER = r"""#!/bin/sh
# A checkpassword honouring the interface: fd 3 = login\0password\0timestamp\0.
{ IFS= read -r login; IFS= read -r pass; IFS= read -r stamp; } <<END
$(head -c 512 <&3 | tr '\0' '\n')
END
exec 3<&-
case "$login" in
  crash) kill -9 $$ ;;
  slow) exec sleep 30 ;;
  slowpid) echo $$ > "$0.pid"; exec sleep 30 ;;
  temp) exit 111 ;;
  stamp) [ "$pass" = "$stamp" ] || exit 1 ;;
  joe) [ "$pass" = secret ] || exit 1 ;;
  nouser) unset USER; HOME=/; export HOME; cd /; exec "$@" ;;
  stdin) if IFS= read -r line; then exit 1; fi ;;
  noisy) head -c 300000 /dev/zero >&2 ;;
  noexec) exit 0 ;;
  *) exit 1 ;;
esac
USER=$login HOME=/tmp/home-$login; export USER HOME
cd / || exit 111
exec "$@"
"""


def writeChecker(directory):
    path = os.path.join(directory, "checker")
    with open(path, "w") as f:
        f.write(CHECKER)
    os.chmod(path, 0o755)
    return [path.encode()]


class CheckPasswordTests(unittest.TestCase):
    def setUp(self):
        self.program = writeChecker(self._tmp())

    def _tmp(self):
        d = tempfile.mkdtemp(prefix="qmailtx-cp-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def check(self, login, password, challenge=b"<1.2@x>", **kw):
        return checkpassword.checkPassword(reactor, self.program, login, password, challenge, **kw)

    async def test_accepted(self):
        """Exit 0 after exec of the next program yields USER, HOME and the uid/gid it ran as."""
        result = await self.check(b"joe", b"secret")
        self.assertEqual(result, checkpassword.Authenticated(
            b"joe", b"/tmp/home-joe", os.getuid(), os.getgid()))

    async def test_timestampOnFd3(self):
        """The third fd-3 field is the challenge, brackets included (APOP-aware checkers use it)."""
        result = await self.check(b"stamp", b"<9.9@h>", b"<9.9@h>")
        self.assertEqual(result.user, b"stamp")

    async def test_badPassword(self):
        """Exit 1 is a permanent refusal carrying the status."""
        with self.assertRaises(checkpassword.Refused) as e:
            await self.check(b"joe", b"wrong")
        self.assertIsInstance(e.exception, PermFailure)
        self.assertEqual((e.exception.text, e.exception.status), (b"authorization failed", 1))

    async def test_temporary(self):
        """Exit 111 is still a refusal (qmail-popup does not distinguish) but keeps status 111."""
        with self.assertRaises(checkpassword.Refused) as e:
            await self.check(b"temp", b"x")
        self.assertEqual(e.exception.status, 111)

    async def test_crash(self):
        """A checker killed by a signal is 'aack, child crashed', temporary."""
        with self.assertRaises(TempFailure) as e:
            await self.check(b"crash", b"x")
        self.assertEqual(e.exception.text, b"aack, child crashed")

    async def test_timeout(self):
        """A checker running past the timeout is killed and reported as crashed."""
        with self.assertRaises(TempFailure) as e:
            await self.check(b"slow", b"x", timeout=0.3)
        self.assertEqual(e.exception.text, b"aack, child crashed")

    async def test_cancelKillsTheChecker(self):
        """
        Cancelling the check kills the checker: a POP3 client that hangs up must not leave
        its checker running, or --maxconn would bound sessions but not checkers.
        """
        from twisted.internet import defer, task

        d = self.check(b"slowpid", b"x")
        pidFile = self.program[0].decode() + ".pid"
        for _ in range(100):
            if os.path.exists(pidFile) and os.path.getsize(pidFile):
                break
            await task.deferLater(reactor, 0.05)
        with open(pidFile) as f:
            pid = int(f.read())
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        for _ in range(100):
            if not os.path.exists("/proc/%d" % pid):
                break
            await task.deferLater(reactor, 0.05)
        self.assertFalse(os.path.exists("/proc/%d" % pid), "the checker still runs")
        await task.deferLater(reactor, 0.1)

    async def test_missingProgram(self):
        """A checker that cannot be started is a temporary failure (SMTP's 454 "child won't
        start", POP3's "unable to fork"), never an acceptance, and the log says why."""
        from twisted.logger import globalLogPublisher

        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.program = [b"/nonexistent/checkpassword"]
        with self.assertRaises(TempFailure) as e:
            await self.check(b"joe", b"secret")
        self.assertEqual(e.exception.text, checkpassword.NO_FORK)
        self.assertIn("warning: checkpassword: unable to run /nonexistent/checkpassword: "
                      "No such file or directory", [event.get("qmail") for event in seen])

    async def test_userFallsBackToLogin(self):
        """A checker that leaves USER unset still yields the login as user."""
        result = await self.check(b"nouser", b"x")
        self.assertEqual((result.user, result.home), (b"nouser", b"/"))

    async def test_tooLong(self):
        """fd-3 data over 512 bytes is refused without running the checker."""
        with self.assertRaises(checkpassword.Refused):
            await self.check(b"joe", b"x" * 600)

    async def test_nulInAFieldIsRefused(self):
        """
        A NUL inside the login, password or challenge would end that fd-3 field early and
        shift the rest into the next one (a password carrying a replayed CRAM-MD5
        challenge): refused as misuse (status 2) without running the checker, here one
        that cannot even start.
        """
        self.program = [b"/nonexistent/checkpassword"]
        for fields in ((b"joe\0x", b"secret", b""), (b"joe", b"d\0<1.2@x>", b""),
                       (b"joe", b"secret", b"<1\0.2@x>")):
            with self.assertRaises(checkpassword.Refused) as e:
                await self.check(*fields)
            self.assertEqual(e.exception.status, 2)

    async def test_reportOnlyWhenAsked(self):
        """
        A checker that exits 0 without running the next program: POP3 needs the report
        (HOME, uid) and gets a temporary failure; SMTP AUTH asks only for the verdict
        (report=False), and exit 0 is success (spec/smtp.md §7).
        """
        with self.assertRaises(TempFailure) as e:
            await self.check(b"noexec", b"x")
        self.assertEqual(e.exception.text, checkpassword.NO_REPORT)
        self.assertIsNone(await self.check(b"noexec", b"x", report=False))
        self.assertIsNone(await self.check(b"joe", b"secret", report=False))
        with self.assertRaises(checkpassword.Refused):
            await self.check(b"joe", b"wrong", report=False)

    async def test_environmentFromNothing(self):
        """The checker sees only PATH and the variables given, not the daemon's environment."""
        os.environ["QMAILTX_LEAK"] = "1"
        self.addCleanup(os.environ.pop, "QMAILTX_LEAK")
        probe = os.path.join(self._tmp(), "probe")
        with open(probe, "w") as f:
            f.write('#!/bin/sh\nenv > "$0.env"\nexport HOME=/ USER=p\nexec "$@"\n')
        os.chmod(probe, 0o755)
        self.program = [probe.encode()]
        await self.check(b"p", b"x", env={b"TCPREMOTEIP": b"127.0.0.1"})
        seen = open(probe + ".env").read().split("\n")
        self.assertIn("TCPREMOTEIP=127.0.0.1", seen)
        self.assertFalse([v for v in seen if v.startswith("QMAILTX_LEAK")])

    async def test_stdinAtEndOfFile(self):
        """The checker's stdin is at end of file at once (the data comes on fd 3 only)."""
        result = await self.check(b"stdin", b"secret", timeout=10)
        self.assertEqual(result.home, b"/tmp/home-stdin")

    async def test_noisyStderr(self):
        """A checker writing much to stderr is neither blocked nor confused with its report."""
        result = await self.check(b"noisy", b"secret", timeout=10)
        self.assertEqual(result.user, b"noisy")
