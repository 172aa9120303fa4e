"""
Large mailboxes against a live listener: a 50,000-message maildir is listed without
blocking other sessions (and faster on the next login), and a 100 MB message is streamed
by RETR without being held in memory.
"""

import os
import select
import tempfile
import time

import pytest
from twisted.internet import reactor, threads
from twisted.trial import unittest

from qmailtx import maildir, pop3, pop3box
from tests.service import pop3_support as S


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class LargeBase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qmailtx-pop3l-")
        self.addCleanup(S.removeTree, self.dir)
        checker = S.makeChecker(self.dir, {"big": "*", "other": "*"})
        for user in ("big", "other"):
            os.makedirs(os.path.join(self.dir, "home", user))
            maildir.maildirmake(os.path.join(self.dir, "home", user, "Maildir"))
        self.md = os.path.join(self.dir, "home", "big", "Maildir")
        config = pop3.POP3Config(hostname=b"h", checkpassword=[checker.encode()],
                                 mailboxes=pop3box.LocalMailboxes(reactor), refuseRoot=False)
        self.port = reactor.listenTCP(0, pop3.POP3Factory(config, reactor), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def session(self, user):
        r = S.Raw(self.port.getHost().port)
        r.line()
        r.cmd(b"USER " + user)
        assert r.cmd(b"PASS x") == b"+OK \r\n"
        return r


@pytest.mark.slow
class BigMaildirTests(LargeBase):
    COUNT = 50000

    def test_listDoesNotBlock(self):
        """LIST over 50,000 messages is complete, other sessions answer meanwhile, and a second login is faster."""
        new = os.path.join(self.md, "new")
        for i in range(self.COUNT):
            fd = os.open(os.path.join(new, "%d.M1P1Q%d.host" % (1700000000 + i, i)),
                         os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"Subject: %d\n\nx\n" % i)
            os.close(fd)
        past = time.time() - 60
        for name in os.listdir(new):
            os.utime(os.path.join(new, name), (past, past))
        os.utime(new, (past, past))

        def client():
            other = self.session(b"other")
            t0 = time.monotonic()
            big = S.Raw(self.port.getHost().port)
            big.line()
            big.cmd(b"USER big")
            big.send(b"PASS x\r\n")
            pings = []
            while True:
                p0 = time.monotonic()
                assert other.cmd(b"NOOP") == b"+OK \r\n"
                pings.append(time.monotonic() - p0)
                if select.select([big.sock], [], [], 0.01)[0]:
                    first = big.line()
                    break
            assert first == b"+OK \r\n"
            big.cmd(b"LIST")
            listing = big.multi()
            firstTime = time.monotonic() - t0
            big.close()
            t1 = time.monotonic()
            again = self.session(b"big")
            again.cmd(b"LIST")
            relisting = again.multi()
            secondTime = time.monotonic() - t1
            again.cmd(b"QUIT")
            return listing, relisting, pings, firstTime, secondTime
        def check(result):
            listing, relisting, pings, firstTime, secondTime = result
            self.assertEqual(len(listing), self.COUNT)
            self.assertEqual(listing, relisting)
            self.assertEqual(listing[0], b"1 %d\r\n" % len(b"Subject: 0\n\nx\n"))
            self.assertLess(max(pings), 0.5)
            self.assertLess(secondTime, firstTime)
        return threads.deferToThread(client).addCallback(check)


@pytest.mark.slow
class HugeMessageTests(LargeBase):
    def test_retr100MB(self):
        """RETR of a 100 MB message streams it whole and byte-exact, without holding it in memory."""
        line = b"." + b"x" * 98 + b"\n"
        count = 100 * 1024 * 1024 // len(line)
        path = os.path.join(self.md, "cur", "1.huge:2,")
        with open(path, "wb") as f:
            block = line * 1024
            for _ in range(count // 1024):
                f.write(block)
        os.utime(path, (time.time() - 60, time.time() - 60))
        expected = (count // 1024) * 1024 * (len(line) + 2) + len(b"\r\n.\r\n")

        def client():
            base = rss()
            peak = base
            r = self.session(b"big")
            assert r.cmd(b"RETR 1") == b"+OK \r\n"
            total = 0
            tail = b""
            while True:
                chunk = r.f.read1(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                tail = (tail + chunk)[-7:]
                peak = max(peak, rss())
                if total >= expected and tail.endswith(b"\r\n\r\n.\r\n"):
                    break
            r.close()
            return total, tail, peak - base
        def check(result):
            total, tail, growth = result
            self.assertEqual(total, expected)
            self.assertTrue(tail.endswith(b"\r\n\r\n.\r\n"))
            self.assertLess(growth, 40 * 1024 * 1024)
        return threads.deferToThread(client).addCallback(check)
