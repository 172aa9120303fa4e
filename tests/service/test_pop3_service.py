"""
A live POP3/POP3S listener on 127.0.0.1 driven by poplib and raw sockets: every row of
spec/pop3.md §1 (AUTHORIZATION), §3 (TRANSACTION/UPDATE) and §5 (CAPA, STLS, AUTH, TLS
required), authenticating through an external checkpassword shell script.
"""

import base64
import hashlib
import hmac
import os
import poplib
import shutil
import tempfile

from twisted.internet import reactor, threads
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from qmailtx import maildir, pop3, pop3box
from tests.service import pop3_support as S

MSG1 = b"From: a@b\nSubject: one\n\n.dotted\nbody1\n"
MSG2 = b"From: c@d\nSubject: two\n\nl1\nl2\nl3\n"


class POP3ServiceBase(unittest.TestCase):
    users = {"joe": "secret", "crash": "*", "slow": "*", "nomd": "*", "empty": "*",
             "cram": "*"}
    tls = True
    tlsRequired = False
    implicit = False
    cram = False

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qmailtx-pop3-")
        self.addCleanup(S.removeTree, self.dir)
        self.checker = S.makeChecker(self.dir, self.users)
        for user in self.users:
            home = os.path.join(self.dir, "home", user)
            os.makedirs(home)
            if user != "nomd":
                maildir.maildirmake(os.path.join(home, "Maildir"))
        self.md = os.path.join(self.dir, "home", "joe", "Maildir")
        S.addMessage(self.md, "new", "1000.a.host", MSG1, age=30)
        S.addMessage(self.md, "cur", "1001.b.host:2,S", MSG2, age=20)
        self.config = pop3.POP3Config(
            hostname=b"pop.example.com", checkpassword=[self.checker.encode()],
            mailboxes=pop3box.LocalMailboxes(reactor),
            tlsContext=pop3.serverTLSContext(S.certificate()) if self.tls else None,
            tlsRequired=self.tlsRequired, cramMD5=self.cram, refuseRoot=False,
            checkTimeout=2.0)
        factory = pop3.POP3Factory(self.config, reactor, implicitTLS=self.implicit)
        if self.implicit:
            factory = TLSMemoryBIOFactory(self.config.tlsContext, False, factory)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.portNumber = self.port.getHost().port

    def run_(self, f, *a):
        """Run a blocking client function in a thread while the reactor serves."""
        return threads.deferToThread(f, *a)

    def raw(self):
        return S.Raw(self.portNumber, tls=self.implicit)

    def login(self, r, user=b"joe", password=b"secret"):
        greeting = r.line()
        assert r.cmd(b"USER " + user) == b"+OK \r\n"
        assert r.cmd(b"PASS " + password) == b"+OK \r\n"
        return greeting


class AuthorizationTests(POP3ServiceBase):
    def test_greeting(self):
        """The greeting is '+OK <N.TIME@HOSTNAME>'."""
        def client():
            r = self.raw()
            g = r.line()
            r.close()
            return g
        def check(g):
            self.assertRegex(g, rb"^\+OK <\d+\.\d+@pop\.example\.com>\r\n$")
        return self.run_(client).addCallback(check)

    def test_rows(self):
        """§1 rows: USER empty/ok/repeat, PASS order and syntax, APOP syntax, NOOP, other verbs."""
        def client():
            r = self.raw()
            r.line()
            out = [r.cmd(c) for c in (
                b"PASS x", b"USER", b"USER ", b"USER a", b"user joe", b"PASS", b"APOP joe",
                b"NOOP", b"STAT", b"LIST", b"RETR 1", b"XYZZY", b"")]
            out.append(r.cmd(b"QUIT"))
            out.append(r.closed())
            return out
        def check(out):
            self.assertEqual(out, [
                b"-ERR USER first\r\n", b"-ERR syntax error\r\n", b"-ERR syntax error\r\n",
                b"+OK \r\n", b"+OK \r\n", b"-ERR syntax error\r\n", b"-ERR syntax error\r\n",
                b"+OK \r\n", b"-ERR authorization first\r\n", b"-ERR authorization first\r\n",
                b"-ERR authorization first\r\n", b"-ERR authorization first\r\n",
                b"-ERR authorization first\r\n", b"+OK \r\n", True])
        return self.run_(client).addCallback(check)

    def test_badPasswordOneAttempt(self):
        """A refused password answers '-ERR authorization failed' and closes: one attempt only."""
        def client():
            r = self.raw()
            r.line()
            r.cmd(b"USER joe")
            return r.cmd(b"PASS wrong"), r.closed()
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR authorization failed\r\n", True))

    def test_crashedChecker(self):
        """A checker killed by a signal answers '-ERR aack, child crashed' and closes."""
        def client():
            r = self.raw()
            r.line()
            r.cmd(b"USER crash")
            return r.cmd(b"PASS x"), r.closed()
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR aack, child crashed\r\n", True))

    def test_slowCheckerDoesNotBlock(self):
        """A hanging checker is killed at the timeout, and other sessions are served meanwhile."""
        def client():
            slow = self.raw()
            slow.line()
            slow.cmd(b"USER slow")
            slow.send(b"PASS x\r\n")
            r = self.raw()
            self.login(r)
            stat = r.cmd(b"STAT")
            r.cmd(b"QUIT")
            return stat, slow.line(), slow.closed()
        return self.run_(client).addCallback(
            self.assertEqual, (b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2)),
                               b"-ERR aack, child crashed\r\n", True))

    def test_hangUpKillsTheChecker(self):
        """
        A client that hangs up while its checker runs leaves no checker behind: the
        checker is killed with the session, so --maxconn bounds checkers too.
        """
        import time

        pidFile = self.checker + ".slowpid"
        self.config.checkTimeout = 30.0
        def client():
            slow = self.raw()
            slow.line()
            slow.cmd(b"USER slow")
            slow.send(b"PASS x\r\n")
            for _ in range(100):
                if os.path.exists(pidFile) and os.path.getsize(pidFile):
                    break
                time.sleep(0.05)
            with open(pidFile) as f:
                pid = int(f.read())
            slow.f.close()
            slow.close()
            for _ in range(100):
                if not os.path.exists("/proc/%d" % pid):
                    return True
                time.sleep(0.05)
            os.kill(pid, 9)
            return False
        return self.run_(client).addCallback(self.assertIs, True)

    def test_noMaildir(self):
        """A user whose home lacks the maildir gets qmail-pop3d's literal text and a close."""
        def client():
            r = self.raw()
            r.line()
            r.cmd(b"USER nomd")
            return r.cmd(b"PASS x"), r.closed()
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR this user has no $HOME/Maildir\r\n", True))

    def test_scanError(self):
        """A maildir whose new/ vanished answers '-ERR unable to scan $HOME/Maildir'."""
        os.rmdir(os.path.join(self.dir, "home", "empty", "Maildir", "new"))
        def client():
            r = self.raw()
            r.line()
            r.cmd(b"USER empty")
            return r.cmd(b"PASS x"), r.closed()
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR unable to scan $HOME/Maildir\r\n", True))

    def probedApopper(self):
        """Add login C{apopper} (any password) and make the checker write what it read
        on fd 3 to the returned path."""
        with open(self.checker + ".db", "a") as f:
            f.write("apopper:*\n")
        os.makedirs(os.path.join(self.dir, "home", "apopper"))
        with open(self.checker) as f:
            script = f.read()
        with open(self.checker, "w") as f:
            f.write(script.replace('exec 3<&-\n', 'exec 3<&-\nprintf "%s|%s|%s" "$login" "$pass" "$stamp" > "$0.probe"\n'))
        return self.checker + ".probe"

    def test_apopPassesTimestamp(self):
        """APOP hands the checker (name, digest, greeting timestamp with brackets)."""
        probe = self.probedApopper()
        def client():
            r = self.raw()
            g = r.line()
            reply = r.cmd(b"APOP apopper  abc def")
            return g, reply
        def check(result):
            g, reply = result
            stamp = g[4:-2]
            self.assertEqual(reply, b"-ERR this user has no $HOME/Maildir\r\n")
            with open(probe, "rb") as f:
                self.assertEqual(f.read(), b"apopper| abc def|" + stamp)
        return self.run_(client).addCallback(check)

    def test_nulEndsTheCommand(self):
        """
        A NUL ends the command (qmail-popup's C strings): C{APOP name digest\\0<old stamp>}
        reaches the checker with this greeting's timestamp, not the old one, and
        C{USER joe\\0secret} names user joe, whose password is not C{x}.
        """
        probe = self.probedApopper()
        def client():
            r = self.raw()
            g = r.line()
            apop = r.cmd(b"APOP apopper 0123abcd\0<1.1@pop.example.com>")
            r.close()
            with open(probe, "rb") as f:
                seen = f.read()
            r = self.raw()
            g2 = r.line()
            user = r.cmd(b"USER joe\0secret")
            password, closed = r.cmd(b"PASS x"), r.closed()
            with open(probe, "rb") as f:
                return g, apop, seen, user, password, closed, f.read(), g2
        def check(result):
            g, apop, seen, user, password, closed, checked, g2 = result
            self.assertEqual(apop, b"-ERR this user has no $HOME/Maildir\r\n")
            self.assertEqual(seen, b"apopper|0123abcd|" + g[4:-2])
            self.assertEqual((user, password, closed),
                             (b"+OK \r\n", b"-ERR authorization failed\r\n", True))
            self.assertEqual(checked, b"joe|x|" + g2[4:-2])  # the login ended at the NUL
        return self.run_(client).addCallback(check)

    def test_poplibLogin(self):
        """poplib's user/pass_/stat/list/uidl/retr/dele/quit run against the server."""
        def client():
            p = poplib.POP3("127.0.0.1", self.portNumber, timeout=10)
            p.user("joe")
            p.pass_("secret")
            stat = p.stat()
            listing = p.list()[1]
            uidl = p.uidl()[1]
            retr = p.retr(1)[1]
            p.dele(2)
            p.quit()
            return stat, listing, uidl, retr
        def check(result):
            stat, listing, uidl, retr = result
            self.assertEqual(stat, (2, len(MSG1) + len(MSG2)))
            self.assertEqual(listing, [b"1 %d" % len(MSG1), b"2 %d" % len(MSG2)])
            self.assertEqual(uidl, [b"1 1000.a.host", b"2 1001.b.host"])
            self.assertEqual(retr, [b"From: a@b", b"Subject: one", b"", b".dotted", b"body1", b""])
            self.assertEqual(os.listdir(os.path.join(self.md, "new")), [])
            self.assertEqual(os.listdir(os.path.join(self.md, "cur")), ["1000.a.host:2,"])
        return self.run_(client).addCallback(check)


class TransactionTests(POP3ServiceBase):
    def test_rows(self):
        """§3 rows byte for byte, including STAT counting deleted messages and LAST."""
        def client():
            r = self.raw()
            self.login(r)
            out = {}
            out["stat"] = r.cmd(b"STAT")
            out["list"] = (r.cmd(b"LIST"), r.multi())
            out["list2"] = r.cmd(b"LIST 2")
            out["uidl"] = (r.cmd(b"UIDL"), r.multi())
            out["uidl1"] = r.cmd(b"uidl 1")
            out["errors"] = [r.cmd(c) for c in (b"LIST x", b"LIST 0", b"LIST 3", b"DELE",
                                                b"USER joe", b"PASS x", b"APOP a b", b"STLS",
                                                b"AUTH PLAIN", b"FOO")]
            out["last0"] = r.cmd(b"LAST")
            out["dele"] = r.cmd(b"DELE 2x")
            out["again"] = r.cmd(b"DELE 2")
            out["retrdel"] = r.cmd(b"RETR 2")
            out["stat2"] = r.cmd(b"STAT")
            out["list3"] = (r.cmd(b"LIST"), r.multi())
            out["last"] = r.cmd(b"LAST")
            out["rset"] = r.cmd(b"RSET")
            out["last2"] = r.cmd(b"LAST")
            out["stat3"] = r.cmd(b"STAT")
            out["noop"] = r.cmd(b"NOOP")
            r.close()
            return out
        n1, n2 = len(MSG1), len(MSG2)
        def check(out):
            self.assertEqual(out["stat"], b"+OK 2 %d\r\n" % (n1 + n2))
            self.assertEqual(out["list"], (b"+OK \r\n", [b"1 %d\r\n" % n1, b"2 %d\r\n" % n2]))
            self.assertEqual(out["list2"], b"+OK 2 %d\r\n" % n2)
            self.assertEqual(out["uidl"], (b"+OK \r\n", [b"1 1000.a.host\r\n", b"2 1001.b.host\r\n"]))
            self.assertEqual(out["uidl1"], b"+OK 1 1000.a.host\r\n")
            self.assertEqual(out["errors"], [
                b"-ERR syntax error\r\n", b"-ERR messages are counted from 1\r\n",
                b"-ERR not that many messages\r\n", b"-ERR syntax error\r\n"]
                + [b"-ERR unimplemented\r\n"] * 6)
            self.assertEqual(out["last0"], b"+OK 0\r\n")
            self.assertEqual(out["dele"], b"+OK \r\n")
            self.assertEqual(out["again"], b"-ERR already deleted\r\n")
            self.assertEqual(out["retrdel"], b"-ERR already deleted\r\n")
            self.assertEqual(out["stat2"], b"+OK 2 %d\r\n" % n1)
            self.assertEqual(out["list3"], (b"+OK \r\n", [b"1 %d\r\n" % n1]))
            self.assertEqual(out["last"], b"+OK 2\r\n")
            self.assertEqual(out["rset"], b"+OK \r\n")
            self.assertEqual(out["last2"], b"+OK 0\r\n")
            self.assertEqual(out["stat3"], b"+OK 2 %d\r\n" % (n1 + n2))
            self.assertEqual(out["noop"], b"+OK \r\n")
            self.assertEqual(sorted(os.listdir(os.path.join(self.md, "new"))), ["1000.a.host"])
        return self.run_(client).addCallback(check)

    def test_retrAndTop(self):
        """RETR/TOP transmission: dots doubled, extra empty line, TOP limits and quirks."""
        def client():
            r = self.raw()
            self.login(r)
            out = []
            for c in (b"RETR 1", b"TOP 2 1", b"TOP 2 0", b"TOP 2", b"RETR 2 2", b"TOP 2 x"):
                out.append((r.cmd(c), r.multi()))
            r.close()
            return out
        whole2 = [b"From: c@d\r\n", b"Subject: two\r\n", b"\r\n", b"l1\r\n", b"l2\r\n", b"l3\r\n", b"\r\n"]
        def check(out):
            self.assertEqual(out[0], (b"+OK \r\n", [b"From: a@b\r\n", b"Subject: one\r\n", b"\r\n",
                                                     b"..dotted\r\n", b"body1\r\n", b"\r\n"]))
            self.assertEqual(out[1], (b"+OK \r\n", whole2[:4] + [b"\r\n"]))
            self.assertEqual(out[2], (b"+OK \r\n", whole2[:3] + [b"\r\n"]))
            self.assertEqual(out[3], (b"+OK \r\n", whole2))
            self.assertEqual(out[4], (b"+OK \r\n", whole2[:5] + [b"\r\n"]))
            self.assertEqual(out[5], (b"+OK \r\n", whole2))
        return self.run_(client).addCallback(check)

    def test_unreadableMessage(self):
        """A listed message that vanished answers '-ERR unable to open that message'; the session goes on."""
        def client():
            r = self.raw()
            self.login(r)
            os.unlink(os.path.join(self.md, "new", "1000.a.host"))
            out = r.cmd(b"RETR 1"), r.cmd(b"NOOP")
            r.close()
            return out
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR unable to open that message\r\n", b"+OK \r\n"))

    def test_fifoIsNoMessage(self):
        """
        A FIFO in the maildir answers '-ERR unable to open that message' at once, and the
        daemon goes on serving: its open once waited for a writer in the reactor's thread.
        """
        fifo = os.path.join(self.md, "new", "999.fifo.host")
        os.mkfifo(fifo)
        past = 1e9
        os.utime(fifo, (past, past))
        def client():
            r = self.raw()
            self.login(r)
            return S.retrieveFifo(r, fifo, b"NOOP")
        return self.run_(client).addCallback(
            self.assertEqual, (b"-ERR unable to open that message\r\n", b"+OK \r\n"))

    def test_noChangeWithoutQuit(self):
        """A client that deletes and disconnects without QUIT changes nothing (no unlink, no new→cur)."""
        def client():
            r = self.raw()
            self.login(r)
            r.cmd(b"DELE 1")
            r.cmd(b"DELE 2")
            r.close()
        def check(_):
            return threads.deferToThread(lambda: None).addCallback(lambda _: (
                self.assertEqual(os.listdir(os.path.join(self.md, "new")), ["1000.a.host"]),
                self.assertEqual(os.listdir(os.path.join(self.md, "cur")), ["1001.b.host:2,S"])))
        return self.run_(client).addCallback(check)

    def test_quitUpdate(self):
        """QUIT unlinks deleted messages, moves the rest from new/ to cur/<x>:2, and answers '+OK '."""
        S.addMessage(self.md, "new", "1002.c.host", b"x\n", age=10)
        def client():
            r = self.raw()
            self.login(r)
            r.cmd(b"DELE 2")
            return r.cmd(b"QUIT"), r.closed()
        def check(result):
            self.assertEqual(result, (b"+OK \r\n", True))
            self.assertEqual(os.listdir(os.path.join(self.md, "new")), [])
            self.assertEqual(sorted(os.listdir(os.path.join(self.md, "cur"))),
                             ["1000.a.host:2,", "1002.c.host:2,"])
        return self.run_(client).addCallback(check)

    def test_quitDeletesWhereAnotherSessionMovedIt(self):
        """
        A message DELEted as new/x after another session's QUIT moved it to cur/x:2, is
        unlinked there: QUIT answers '+OK ' and the message does not come back.
        """
        def client():
            a = self.raw()
            self.login(a)
            b = self.raw()
            self.login(b)
            b.cmd(b"QUIT")
            moved = sorted(os.listdir(os.path.join(self.md, "cur")))
            a.cmd(b"DELE 1")
            return moved, a.cmd(b"QUIT"), a.closed()
        def check(result):
            self.assertEqual(result, (["1000.a.host:2,", "1001.b.host:2,S"], b"+OK \r\n", True))
            self.assertEqual(os.listdir(os.path.join(self.md, "cur")), ["1001.b.host:2,S"])
        return self.run_(client).addCallback(check)

    def test_quitUnlinkFailure(self):
        """An unlink that fails prints '-ERR unable to unlink all deleted messages' and QUIT still ends '+OK '."""
        if os.getuid() == 0:
            cur = os.path.join(self.md, "cur")
            os.rename(os.path.join(cur, "1001.b.host:2,S"), os.path.join(cur, "keep"))
            os.mkdir(os.path.join(cur, "1001.b.host:2,S"))
            os.rename(os.path.join(cur, "keep"), os.path.join(cur, "1001.b.host:2,S", "x"))
            os.utime(os.path.join(cur, "1001.b.host:2,S"), (1e9, 1e9))
        else:
            os.chmod(os.path.join(self.md, "cur"), 0o500)
            self.addCleanup(os.chmod, os.path.join(self.md, "cur"), 0o700)
        def client():
            r = self.raw()
            self.login(r, b"joe")
            r.cmd(b"STAT")
            r.send(b"DELE 1\r\nDELE 2\r\nQUIT\r\n")
            return r.f.read()
        def check(data):
            self.assertEqual(data, b"+OK \r\n+OK \r\n"
                             b"-ERR unable to unlink all deleted messages\r\n+OK \r\n")
        return self.run_(client).addCallback(check)

    def test_pipelining(self):
        """Pipelined commands (sent in one write) get their replies in order."""
        def client():
            r = self.raw()
            r.line()
            r.send(b"USER joe\r\nPASS secret\r\nSTAT\r\nLIST 1\r\nRETR 2\r\nNOOP\r\nQUIT\r\n")
            data = r.f.read()
            return data
        def check(data):
            self.assertEqual(data, b"+OK \r\n+OK \r\n+OK 2 %d\r\n+OK 1 %d\r\n+OK \r\n"
                             b"From: c@d\r\nSubject: two\r\n\r\nl1\r\nl2\r\nl3\r\n\r\n.\r\n"
                             b"+OK \r\n+OK \r\n" % (len(MSG1) + len(MSG2), len(MSG1)))
        return self.run_(client).addCallback(check)

    def test_hugeLine(self):
        """A command line beyond the limit closes the connection without touching the maildir."""
        def client():
            r = self.raw()
            self.login(r)
            r.send(b"DELE 1" + b" " * 100000 + b"\r\nQUIT\r\n")
            return r.closed()
        def check(closed):
            self.assertTrue(closed)
            self.assertEqual(os.listdir(os.path.join(self.md, "new")), ["1000.a.host"])
        return self.run_(client).addCallback(check)


class ExtensionTests(POP3ServiceBase):
    cram = True

    def test_capa(self):
        """CAPA in both states: USER/SASL/STLS only before login, STLS gone once TLS is active."""
        def client():
            p = poplib.POP3("127.0.0.1", self.portNumber, timeout=10)
            before = p.capa()
            p.stls(S.clientContext())
            tls = p.capa()
            p.user("joe")
            p.pass_("secret")
            after = p.capa()
            p.quit()
            return before, tls, after
        def check(result):
            before, tls, after = result
            self.assertEqual(set(before), {"TOP", "UIDL", "PIPELINING", "USER", "SASL", "STLS",
                                           "IMPLEMENTATION"})
            self.assertEqual(before["SASL"], ["PLAIN", "LOGIN", "CRAM-MD5"])
            self.assertEqual(set(tls), {"TOP", "UIDL", "PIPELINING", "USER", "SASL", "IMPLEMENTATION"})
            self.assertEqual(set(after), {"TOP", "UIDL", "PIPELINING", "IMPLEMENTATION"})
        return self.run_(client).addCallback(check)

    def test_stls(self):
        """STLS: '+OK Begin TLS negotiation', pipelined plaintext discarded, USER forgotten, no new greeting."""
        def client():
            r = self.raw()
            r.line()
            r.cmd(b"USER joe")
            r.send(b"STLS\r\nNOOP\r\n")
            first = r.line()
            r.starttls()
            out = [first, r.cmd(b"PASS secret"), r.cmd(b"STLS"), r.cmd(b"USER joe"),
                   r.cmd(b"PASS secret"), r.cmd(b"STLS"), r.cmd(b"QUIT")]
            return out
        return self.run_(client).addCallback(self.assertEqual, [
            b"+OK Begin TLS negotiation\r\n", b"-ERR USER first\r\n",
            b"-ERR Command not permitted when TLS active\r\n", b"+OK \r\n", b"+OK \r\n",
            b"-ERR unimplemented\r\n", b"+OK \r\n"])

    def test_authPlain(self):
        """AUTH PLAIN with and without initial response; success enters TRANSACTION with '+OK '."""
        token = base64.b64encode(b"ignored\0joe\0secret")
        def client():
            r = self.raw()
            r.line()
            a = r.cmd(b"AUTH PLAIN " + token), r.cmd(b"STAT")
            r.close()
            r = self.raw()
            r.line()
            b = r.cmd(b"AUTH PLAIN"), r.cmd(token), r.cmd(b"QUIT")
            return a, b
        return self.run_(client).addCallback(self.assertEqual, (
            (b"+OK \r\n", b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2))),
            (b"+ \r\n", b"+OK \r\n", b"+OK \r\n")))

    def test_authLogin(self):
        """AUTH LOGIN prompts Username:/Password: in base64; a wrong password fails and closes."""
        def client():
            r = self.raw()
            r.line()
            a = (r.cmd(b"AUTH LOGIN"), r.cmd(base64.b64encode(b"joe")),
                 r.cmd(base64.b64encode(b"secret")))
            r.close()
            r = self.raw()
            r.line()
            b = (r.cmd(b"auth login " + base64.b64encode(b"joe")),
                 r.cmd(base64.b64encode(b"bad")), r.closed())
            return a, b
        return self.run_(client).addCallback(self.assertEqual, (
            (b"+ VXNlcm5hbWU6\r\n", b"+ UGFzc3dvcmQ6\r\n", b"+OK \r\n"),
            (b"+ UGFzc3dvcmQ6\r\n", b"-ERR authorization failed\r\n", True)))

    def test_authErrors(self):
        """AUTH: '*' cancels, bad base64 is malformed, unknown mechanism, bare AUTH lists mechanisms."""
        def client():
            r = self.raw()
            r.line()
            out = [r.cmd(b"AUTH LOGIN"), r.cmd(b"*"), r.cmd(b"AUTH PLAIN !!!"),
                   r.cmd(b"AUTH PLAIN"), r.cmd(base64.b64encode(b"nonul")),
                   r.cmd(b"AUTH FOO"), r.cmd(b"AUTH"), r.multi(), r.cmd(b"NOOP")]
            r.close()
            return out
        return self.run_(client).addCallback(self.assertEqual, [
            b"+ VXNlcm5hbWU6\r\n", b"-ERR auth exchange canceled\r\n",
            b"-ERR malformed auth input\r\n", b"+ \r\n", b"-ERR malformed auth input\r\n",
            b"-ERR auth type unimplemented\r\n", b"+OK\r\n",
            [b"PLAIN\r\n", b"LOGIN\r\n", b"CRAM-MD5\r\n"], b"+OK \r\n"])

    def test_cramMD5(self):
        """AUTH CRAM-MD5: the challenge is the greeting timestamp; checker gets (user, digest, timestamp)."""
        probe = self.checker + ".probe"
        with open(self.checker) as f:
            script = f.read()
        with open(self.checker, "w") as f:
            f.write(script.replace('exec 3<&-\n', 'exec 3<&-\nprintf "%s|%s|%s" "$login" "$pass" "$stamp" > "$0.probe"\n'))
        def client():
            r = self.raw()
            g = r.line()
            challenge = r.cmd(b"AUTH CRAM-MD5")
            stamp = base64.b64decode(challenge[2:-2])
            digest = hmac.new(b"secret", stamp, hashlib.md5).hexdigest().encode()
            reply = r.cmd(base64.b64encode(b"cram " + digest))
            r.close()
            return g, stamp, digest, reply
        def check(result):
            g, stamp, digest, reply = result
            self.assertEqual(g[4:-2], stamp)
            self.assertEqual(reply, b"+OK \r\n")
            with open(probe, "rb") as f:
                self.assertEqual(f.read(), b"cram|" + digest + b"|" + stamp)
        return self.run_(client).addCallback(check)


class NoTLSTests(POP3ServiceBase):
    tls = False

    def test_stlsUnconfigured(self):
        """Without a certificate, STLS is '-ERR unimplemented' and CAPA has no STLS."""
        def client():
            p = poplib.POP3("127.0.0.1", self.portNumber, timeout=10)
            caps = p.capa()
            r = self.raw()
            r.line()
            return caps, r.cmd(b"STLS")
        def check(result):
            caps, stls = result
            self.assertNotIn("STLS", caps)
            self.assertEqual(stls, b"-ERR unimplemented\r\n")
        return self.run_(client).addCallback(check)


class TLSRequiredTests(POP3ServiceBase):
    tlsRequired = True

    def test_plaintextRefused(self):
        """With TLS required: USER/PASS/APOP/AUTH (bare AUTH too) answer '-ERR TLS required' and CAPA hides USER/SASL until STLS."""
        def client():
            r = self.raw()
            r.line()
            before = [r.cmd(c) for c in (b"USER joe", b"PASS x", b"APOP a b", b"AUTH PLAIN",
                                         b"AUTH", b"STLS now")]
            r.cmd(b"CAPA")
            caps = r.multi()
            r.cmd(b"STLS")
            r.starttls()
            r.cmd(b"CAPA")
            capsTLS = r.multi()
            after = [r.cmd(b"USER joe"), r.cmd(b"PASS secret")]
            r.close()
            return before, caps, capsTLS, after
        def check(result):
            before, caps, capsTLS, after = result
            # Bare AUTH lists no mechanism CAPA hides; STLS takes no argument (RFC 2595).
            self.assertEqual(before, [b"-ERR TLS required\r\n"] * 5 + [b"-ERR syntax error\r\n"])
            self.assertEqual(sorted(caps), sorted([b"TOP\r\n", b"UIDL\r\n", b"PIPELINING\r\n",
                                                   b"STLS\r\n", b"IMPLEMENTATION qmailtx\r\n"]))
            self.assertIn(b"USER\r\n", capsTLS)
            self.assertIn(b"SASL PLAIN LOGIN\r\n", capsTLS)
            self.assertEqual(after, [b"+OK \r\n", b"+OK \r\n"])
        return self.run_(client).addCallback(check)


class ImplicitTLSTests(POP3ServiceBase):
    implicit = True

    def test_pop3s(self):
        """POP3S: TLS from the first byte; poplib.POP3_SSL logs in; no STLS offered."""
        def client():
            p = poplib.POP3_SSL("127.0.0.1", self.portNumber, timeout=10,
                                context=S.clientContext())
            caps = p.capa()
            p.user("joe")
            p.pass_("secret")
            stat = p.stat()
            p.quit()
            return caps, stat
        def check(result):
            caps, stat = result
            self.assertNotIn("STLS", caps)
            self.assertEqual(stat, (2, len(MSG1) + len(MSG2)))
        return self.run_(client).addCallback(check)


class CertificateGoneTests(POP3ServiceBase):
    """control/servercert.pem is read when used (qmailtx.tls.ServerTLS), so it can be gone
    or bad by the time a client says STLS."""

    def setUp(self):
        POP3ServiceBase.setUp(self)
        from qmailtx.tls import ServerTLS

        self.pem = os.path.join(self.dir, "servercert.pem")
        self.config.tlsContext = ServerTLS(self.pem)

    def test_stlsWithoutUsableCertificate(self):
        """With the certificate missing, CAPA offers no STLS and STLS says why with -ERR,
        the session going on in plaintext; with it back, STLS works on the next session."""
        def client():
            p = poplib.POP3("127.0.0.1", self.portNumber, timeout=10)
            caps = p.capa()
            p.quit()
            r = self.raw()
            r.line()
            refused = [r.cmd(b"STLS"), r.cmd(b"STLS"), r.cmd(b"NOOP")]
            r.close()
            with open(self.pem, "wb") as f:
                f.write(open(S.certificate(), "rb").read()[:300])
            r = self.raw()
            r.line()
            truncated = r.cmd(b"STLS")
            r.close()
            shutil.copy(S.certificate(), self.pem)
            r = self.raw()
            r.line()
            accepted = r.cmd(b"STLS")
            r.starttls()
            after = [r.cmd(b"USER joe"), r.cmd(b"PASS secret"), r.cmd(b"QUIT")]
            return caps, refused, truncated, accepted, after
        def check(result):
            caps, refused, truncated, accepted, after = result
            self.assertNotIn("STLS", caps)
            self.assertEqual(refused[:2], [b"-ERR TLS not available: unable to read "
                                           b"certificate: No such file or directory\r\n"] * 2)
            self.assertEqual(refused[2], b"+OK \r\n")
            self.assertTrue(truncated.startswith(b"-ERR TLS not available: "), truncated)
            self.assertEqual(accepted, b"+OK Begin TLS negotiation\r\n")
            self.assertEqual(after, [b"+OK \r\n", b"+OK \r\n", after[2]])
            self.assertTrue(after[2].startswith(b"+OK"))
        return self.run_(client).addCallback(check)
