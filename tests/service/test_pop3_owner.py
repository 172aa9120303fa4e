"""
Privileges and the built-in checkpassword (spec/pop3.md §2, §3 step 1): as root the
TRANSACTION work runs in a worker under the mailbox owner's uid; a checker that leaves us
at uid 0 is refused; C{qmailtx checkpassword} over a C{qmailtx passwd} file works with poplib.
"""

import os
import poplib
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor, threads
from twisted.trial import unittest

from qmailtx import maildir, pop3, pop3box
from tests.service import pop3_support as S

NOBODY = 65534

MSG = b"Subject: hi\n\nhello\n"


def qmailtx(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", *args], input=stdin,
                          capture_output=True)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qmailtx-pop3o-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(S.removeTree, self.dir)

    def home(self, user, uid=None):
        home = os.path.join(self.dir, "home", user)
        os.makedirs(home)
        md = os.path.join(home, "Maildir")
        maildir.maildirmake(md)
        S.addMessage(md, "new", "1.x.host", MSG, age=30)
        if uid is not None:
            for root, dirs, files in os.walk(home):
                for n in [root] + [os.path.join(root, f) for f in files]:
                    os.chown(n, uid, uid)
        return home, md

    def listen(self, program, mailboxes, refuseRoot):
        config = pop3.POP3Config(hostname=b"pop.example.com", checkpassword=program,
                                 mailboxes=mailboxes, refuseRoot=refuseRoot, checkTimeout=20)
        port = reactor.listenTCP(0, pop3.POP3Factory(config, reactor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port


class OwnerTests(Base):
    def setUp(self):
        if os.getuid() != 0:
            raise unittest.SkipTest("needs root")
        Base.setUp(self)

    def loginAsOwner(self, uid):
        """
        Log in to a maildir owned by C{uid} (the checker reports that uid), retrieve its one
        message and quit; a Deferred of (the worker's /proc status, the message, the maildir).
        """
        home, md = self.home("joe", uid)
        boxes, port = self.serveOwner(home, uid)
        def client():
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            p.user("joe")
            p.pass_("secret")
            worker = boxes.workers[(uid, uid)]
            with open("/proc/%d/status" % worker.transport.pid) as f:
                status = f.read()
            retr = p.retr(1)[1]
            p.quit()
            return status, retr, md
        return threads.deferToThread(client)

    def serveOwner(self, home, uid):
        """A root-run POP3 listener whose checker makes joe (password secret) C{uid} with
        C{home}: (its owner mailboxes, its port)."""
        with open(os.path.join(home, ".uid"), "w") as f:
            f.write(str(uid))
        checker = S.makeChecker(self.dir, {"joe": "secret"})
        boxes = pop3box.OwnerMailboxes(reactor, idle=0.1)
        self.addCleanup(boxes.stopAll)
        return boxes, self.listen([checker.encode()], boxes, True)

    @staticmethod
    def ids(status, fields=("Uid:", "Gid:")):
        return [line.split()[1:] for line in status.splitlines() if line.startswith(fields)]

    def test_transactionRunsAsOwner(self):
        """As root, the maildir is listed, read and changed by a worker whose uid/gid are the owner's."""
        def check(result):
            status, retr, md = result
            self.assertEqual(self.ids(status), [[str(NOBODY)] * 4, [str(NOBODY)] * 4])
            self.assertEqual(retr, [b"Subject: hi", b"", b"hello", b""])
            self.assertEqual(os.listdir(os.path.join(md, "cur")), ["1.x.host:2,"])
        return self.loginAsOwner(NOBODY).addCallback(check)

    def test_fifoDoesNotJamTheWorker(self):
        """
        A FIFO in the maildir answers '-ERR unable to open that message' at once and the
        owner's worker goes on serving: its open once waited for a writer until restart.
        """
        home, md = self.home("joe", NOBODY)
        fifo = os.path.join(md, "new", "0.fifo.host")
        os.mkfifo(fifo)
        os.chown(fifo, NOBODY, NOBODY)
        os.utime(fifo, (1e9, 1e9))
        _, port = self.serveOwner(home, NOBODY)
        def client():
            r = S.Raw(port)
            r.line()
            r.cmd(b"USER joe")
            r.cmd(b"PASS secret")
            return S.retrieveFifo(r, fifo, b"RETR 2")
        return threads.deferToThread(client).addCallback(
            self.assertEqual, (b"-ERR unable to open that message\r\n", b"+OK \r\n"))

    def test_ownerWithoutPasswdEntry(self):
        """
        A mailbox owner with no /etc/passwd entry is served (qmail-pop3d needs none, and
        C{qmailtx passwd set} takes any uid): the worker becomes the uid and gid the checker
        reported, with that gid as its only group, instead of asking the passwd file for
        the owner's groups.
        """
        ghost = 54321
        import pwd
        try:
            pwd.getpwuid(ghost)
            raise unittest.SkipTest("uid %d has a passwd entry here" % ghost)
        except KeyError:
            pass
        def check(result):
            status, retr, _ = result
            self.assertEqual(self.ids(status, ("Uid:", "Gid:", "Groups:")),
                             [[str(ghost)] * 4, [str(ghost)] * 4, [str(ghost)]])
            self.assertEqual(retr, [b"Subject: hi", b"", b"hello", b""])
        return self.loginAsOwner(ghost).addCallback(check)

    def test_rootRefused(self):
        """A checker that leaves the session at uid 0 is refused: '-ERR authorization failed'."""
        self.home("joe")
        checker = S.makeChecker(self.dir, {"joe": "secret"})
        boxes = pop3box.OwnerMailboxes(reactor, idle=0.1)
        port = self.listen([checker.encode()], boxes, True)
        def client():
            r = S.Raw(port)
            r.line()
            r.cmd(b"USER joe")
            return r.cmd(b"PASS secret"), r.closed()
        return threads.deferToThread(client).addCallback(
            self.assertEqual, (b"-ERR authorization failed\r\n", True))


class BuiltinCheckpasswordTests(Base):
    def test_poplibWithBuiltin(self):
        """qmailtx passwd writes a salted hash; qmailtx checkpassword accepts it and refuses others."""
        root = os.getuid() == 0
        home, md = self.home("joe", NOBODY if root else None)
        pw = os.path.join(self.dir, "poppasswd")
        ids = [str(NOBODY), str(NOBODY)] if root else []
        result = qmailtx("passwd", pw, "set", "joe", home, *ids, stdin=b"s3cret\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(pw, "rb") as f:
            stored = f.read()
        self.assertNotIn(b"s3cret", stored)
        self.assertIn(b"scrypt$", stored)
        program = [sys.executable.encode(), b"-m", b"qmailtx.scripts.main", b"checkpassword",
                   pw.encode()]
        boxes = pop3box.OwnerMailboxes(reactor, idle=0.1) if root else pop3box.LocalMailboxes(reactor)
        if root:
            self.addCleanup(boxes.stopAll)
        port = self.listen(program, boxes, root)
        def client():
            p = poplib.POP3("127.0.0.1", port, timeout=20)
            p.user("joe")
            p.pass_("s3cret")
            stat = p.stat()
            p.quit()
            bad = poplib.POP3("127.0.0.1", port, timeout=20)
            bad.user("joe")
            try:
                bad.pass_("wrong")
                refused = None
            except poplib.error_proto as e:
                refused = e.args[0]
            return stat, refused
        return threads.deferToThread(client).addCallback(
            self.assertEqual, ((1, len(MSG)), b"-ERR authorization failed"))


class OwnerListingCacheTests(Base):
    def setUp(self):
        if os.getuid() != 0:
            raise unittest.SkipTest("needs root")
        Base.setUp(self)

    def test_repeatedLoginsSeeChanges(self):
        """Repeated logins reuse an unchanged listing, and still see a message delivered in between."""
        home, md = self.home("joe", NOBODY)
        with open(os.path.join(home, ".uid"), "w") as f:
            f.write(str(NOBODY))
        checker = S.makeChecker(self.dir, {"joe": "secret"})
        boxes = pop3box.OwnerMailboxes(reactor, idle=0.1)
        self.addCleanup(boxes.stopAll)
        port = self.listen([checker.encode()], boxes, True)

        def uidls():
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            p.user("joe")
            p.pass_("secret")
            result = p.uidl()[1]
            p.close()
            return result

        def client():
            first, second = uidls(), uidls()
            new = S.addMessage(md, "new", "2.y.host", MSG, age=5)
            os.chown(new, NOBODY, NOBODY)
            past = time.time() - 3
            os.utime(os.path.join(md, "new"), (past, past))
            return first, second, uidls()
        return threads.deferToThread(client).addCallback(self.assertEqual, (
            [b"1 1.x.host"], [b"1 1.x.host"], [b"1 1.x.host", b"2 2.y.host"]))
