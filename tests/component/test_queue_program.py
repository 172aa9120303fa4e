"""
The queue on the real reactor: L{Queue} through the thread pool, and L{ProgramQueue}
running a QMAILQUEUE program (our own C{qmailtx queue}, and shell programs for qmail's
exit codes, fd 6 text and crashes).
"""

import os
import shutil
import sys
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from qmailtx.qqprogram import ProgramQueue
from qmailtx.queue import Queue
from qmailtx.queuelayout import createLayout
from qmailtx.results import PermFailure, TempFailure

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class QueueTestBase(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="qmailtx-queue-")
        self.addCleanup(shutil.rmtree, self.root, True)
        createLayout(os.path.join(self.root, "queue"))

    def files(self, name):
        out = []
        for dirpath, _, names in os.walk(os.path.join(self.root, "queue", name)):
            out += [os.path.join(dirpath, n) for n in names]
        return out

    def script(self, body):
        path = os.path.join(self.root, "qq.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        return path

    def ourQueue(self):
        """A QMAILQUEUE program that is `qmailtx queue` from this checkout."""
        return self.script('PYTHONPATH=%s exec %s -m qmailtx.scripts.main queue\n' % (REPO, sys.executable))


class ThreadedQueueTests(QueueTestBase):
    async def test_concurrentCommits(self):
        """Ten concurrent commits through the reactor's thread pool all reach todo/ with distinct ids."""
        from twisted.internet.defer import gatherResults
        q = Queue(self.root, reactor)
        ds = []
        for i in range(10):
            w = q.begin(b"from network")
            w.write(b"m%d\n" % i)
            ds.append(w.commit(b"a", [b"b"]))
        ids = await gatherResults(ds)
        self.assertEqual(len(set(ids)), 10)
        self.assertEqual(sorted(os.path.basename(p) for p in self.files("todo")),
                         sorted(str(i) for i in ids))

    async def test_abortThreaded(self):
        """abort() through the thread pool removes the message file."""
        from twisted.internet.task import deferLater
        q = Queue(self.root, reactor)
        w = q.begin(b"from network")
        w.write(b"x")
        w.abort()
        for _ in range(100):
            if not self.files("mess"):
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.files("mess"), [])


class ProgramQueueTests(QueueTestBase):
    def queue(self, program, env=None):
        return ProgramQueue(program.encode(), self.root, env or {}, reactor)

    async def test_ourQueueProgram(self):
        """With `qmailtx queue` as QMAILQUEUE the message is queued; its Received line carries the child's pid, the writer's qp."""
        w = self.queue(self.ourQueue()).begin(b"from network")
        w.write(b"Subject: p\n\n")
        w.write(b"body\n")
        result = await w.commit(b"s@x", [b"r@y"])
        self.assertIsNone(result)
        [mess] = self.files("mess")
        with open(mess, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Received: (qmail %d invoked by uid %d); " % (w.qp, os.getuid())))
        self.assertTrue(data.endswith(b"\nSubject: p\n\nbody\n"))
        [todo] = self.files("todo")
        with open(todo, "rb") as f:
            self.assertTrue(f.read().endswith(b"Fs@x\0Tr@y\0"))

    async def test_abortLeavesNothing(self):
        """abort() closes both pipes without an envelope: the program exits 54 and removes its files."""
        w = self.queue(self.ourQueue()).begin(b"from network")
        w.write(b"half a message")
        ended = w._protocol.ended
        w.abort()
        status = await ended
        self.assertEqual(status.exitCode, 54)
        self.assertEqual(self.files("mess") + self.files("intd") + self.files("todo"), [])

    async def test_envAndCwd(self):
        """The program runs in the qmail root with exactly the given environment."""
        out = os.path.join(self.root, "seen")
        program = self.script('cat >/dev/null; cat <&1 >/dev/null; { pwd; echo "$FOO"; } > %s\n' % out)
        w = self.queue(program, {"FOO": "bar"}).begin(b"from network")
        await w.commit(b"", [])
        with open(out) as f:
            self.assertEqual(f.read(), self.root + "\nbar\n")

    async def test_exitCodes(self):
        """Exit 11 is the permanent 'too long', 53 temporary 'write error', 31 permanent, 99 temporary."""
        cases = {
            11: PermFailure(b"envelope address too long for qq (#5.1.3)"),
            53: TempFailure(b"qq write error or disk full (#4.3.0)"),
            31: PermFailure(b"mail server permanently rejected message (#5.3.0)"),
            99: TempFailure(b"qq temporary problem (#4.3.0)"),
        }
        for code, expected in cases.items():
            w = self.queue(self.script("cat >/dev/null; exit %d\n" % code)).begin(b"from network")
            w.write(b"x")
            with self.assertRaises((PermFailure, TempFailure)) as e:
                await w.commit(b"a", [b"b"])
            self.assertEqual(e.exception, expected)

    async def test_customText(self):
        """Exit 82 uses the fd-6 text verbatim, its first byte deciding permanent or temporary."""
        w = self.queue(self.script("cat >/dev/null; printf 'Dno thanks (#5.7.1)' >&6; exit 82\n")).begin(b"x")
        with self.assertRaises(PermFailure) as e:
            await w.commit(b"a", [b"b"])
        self.assertEqual(e.exception.text, b"no thanks (#5.7.1)")

    async def test_crash(self):
        """A program killed by a signal is 'qq crashed', temporary."""
        w = self.queue(self.script("kill -9 $$\n")).begin(b"from network")
        with self.assertRaises(TempFailure) as e:
            await w.commit(b"a", [b"b"])
        self.assertEqual(e.exception.text, b"qq crashed (#4.3.0)")

    async def test_stdinClosedEarly(self):
        """A program that exits 0 without reading the message is a 'qq read error': the caller could not hand it over."""
        w = self.queue(self.script("exec 0<&-; sleep 0.2; exit 0\n")).begin(b"from network")
        for _ in range(64):
            w.write(b"y" * 4096)
        from twisted.internet.task import deferLater
        await deferLater(reactor, 0.5, lambda: None)
        with self.assertRaises(TempFailure) as e:
            await w.commit(b"a", [b"b"])
        self.assertEqual(e.exception.text, b"qq read error (#4.3.0)")

    def test_notExecutable(self):
        """A program that cannot be executed is 'unable to exec qq' from begin(), temporary."""
        path = os.path.join(self.root, "nothere")
        with self.assertRaises(TempFailure) as e:
            self.queue(path).begin(b"from network")
        self.assertEqual(e.exception.text, b"unable to exec qq (#4.3.0)")

    def test_noProcessIsNotAnExitCode(self):
        """A process that cannot be made at all (spawnProcess's OSError: out of processes or
        descriptors) is not the program's exit 120: it reaches the listener as it is, which
        answers qmail-smtpd's 'qqt failure' at DATA."""
        queue = self.queue(self.script("exit 0"))

        def noFork(*args, **kwargs):
            raise OSError(11, "Resource temporarily unavailable")
        queue._reactor = type("NoForkReactor", (), {"spawnProcess": staticmethod(noFork)})()
        with self.assertRaises(OSError):
            queue.begin(b"from network")
