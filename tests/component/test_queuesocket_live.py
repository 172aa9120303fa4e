"""
The queue socket on the real reactor: L{QueueSocketService} listening on ROOT/public/qmail-queue
and C{qmailtx queue}'s client side (L{qmailtx.scripts.queue.handOff}) in a thread, so the
uid comes from the kernel's SO_PEERCRED; socket and directory modes; a stale socket replaced
at start and the socket removed at stop.
"""

import os
import shutil
import socket
import stat
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from qmailtx.envelope import encodeEnvelope
from qmailtx.queue import Queue
from qmailtx.queuelayout import createLayout
from qmailtx.queuesocket import QueueSocketService, socketPath
from qmailtx.scripts.queue import EXIT_LOST, handOff

ENVELOPE = encodeEnvelope(b"joe@example.org", [b"a@example.net"])


class QueueSocketLiveTests(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="qmailtx-qsock-")
        self.addCleanup(shutil.rmtree, self.root, True)
        createLayout(os.path.join(self.root, "queue"))
        os.mkdir(os.path.join(self.root, "alias"))
        self.path = socketPath(self.root)

    def start(self):
        service = QueueSocketService(self.root, Queue(self.root, reactor), reactor)
        service.startService()
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service):
        if service.running:
            return service.stopService()

    def fd(self, data):
        f = tempfile.TemporaryFile(dir=self.root)
        self.addCleanup(f.close)
        f.write(data)
        f.seek(0)
        return f.fileno()

    def files(self, kind):
        out = []
        for dirpath, _, names in os.walk(os.path.join(self.root, "queue", kind)):
            out += [os.path.join(dirpath, n) for n in names]
        return out

    @defer.inlineCallbacks
    def test_queuedForThePeersUid(self):
        """A message handed over the socket is queued with the uid the kernel reports for the client, and 0 comes back."""
        self.start()
        body = b"Subject: hi\n\n" + b"line\n" * 50000
        code = yield threads.deferToThread(handOff, self.path, self.fd(body), self.fd(ENVELOPE))
        self.assertEqual(code, 0)
        [mess] = self.files("mess")
        with open(mess, "rb") as f:
            data = f.read()
        self.assertRegex(data.split(b"\n")[0],
                         rb"^Received: \(qmail \d+ invoked by uid %d\); " % os.geteuid())
        self.assertTrue(data.endswith(b"\n" + body))
        [todo] = self.files("todo")
        with open(todo, "rb") as f:
            self.assertTrue(f.read().startswith(b"u%d\0p" % os.geteuid()))

    @defer.inlineCallbacks
    def test_envelopeEndIsTheFinalNul(self):
        """The client stops at the envelope's final NUL even if its fd 1 stays open, as qmail-queue does."""
        self.start()
        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        self.addCleanup(os.close, writeFd)
        os.write(writeFd, ENVELOPE)
        code = yield threads.deferToThread(handOff, self.path, self.fd(b"x\n"), readFd)
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_daemonsAnswersReachTheClient(self):
        """A cut-short envelope is the daemon's 54 and a bad one its 91, passed on as the client's exit code."""
        self.start()
        code = yield threads.deferToThread(handOff, self.path, self.fd(b"x\n"),
                                           self.fd(b"Fa@b\0Tc@d\0"))
        self.assertEqual(code, 54)
        code = yield threads.deferToThread(handOff, self.path, self.fd(b"x\n"),
                                           self.fd(b"Fa@b\0Xc@d\0\0"))
        self.assertEqual(code, 91)
        self.assertEqual(self.files("mess") + self.files("todo"), [])

    @defer.inlineCallbacks
    def test_unreadableMessage(self):
        """A message fd that cannot be read is qmail-queue's 54; the daemon queues nothing."""
        self.start()
        dirFd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, dirFd)
        code = yield threads.deferToThread(handOff, self.path, dirFd, self.fd(ENVELOPE))
        self.assertEqual(code, 54)
        yield threads.deferToThread(lambda: None)
        self.assertEqual(self.files("todo"), [])

    def test_modesAndStop(self):
        """public/ is 0755 and the socket 0666 while listening; stopping removes the socket."""
        service = self.start()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o755)
        st = os.lstat(self.path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o666)
        d = defer.maybeDeferred(service.stopService)
        d.addCallback(lambda _: self.assertFalse(os.path.lexists(self.path)))
        return d

    @defer.inlineCallbacks
    def test_staleSocketReplacedAndNoDaemonIsNone(self):
        """A socket left by a killed daemon refuses connections (the client says None: no daemon), and a new daemon replaces it."""
        os.makedirs(os.path.dirname(self.path))
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        self.assertIsNone(handOff(self.path, self.fd(b"x\n"), self.fd(ENVELOPE)))
        self.assertIsNone(handOff(self.path + ".none", self.fd(b"x\n"), self.fd(ENVELOPE)))
        self.start()
        code = yield threads.deferToThread(handOff, self.path, self.fd(b"x\n"), self.fd(ENVELOPE))
        self.assertEqual(code, 0)

    def test_notASocketLeftAlone(self):
        """Anything but a socket at the path is not removed; the service just does not listen."""
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"keep")
        service = self.start()
        self.assertIsNone(service.port)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"keep")

    @defer.inlineCallbacks
    def test_lostDaemon(self):
        """A server that closes without answering leaves the client with 74 (communication failed)."""
        os.makedirs(os.path.dirname(self.path))
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(self.path)
        server.listen(1)

        def closeFirst():
            conn, _ = server.accept()
            conn.recv(10)
            conn.close()

        d = threads.deferToThread(closeFirst)
        code = yield threads.deferToThread(handOff, self.path, self.fd(b"x\n"), self.fd(ENVELOPE))
        yield d
        self.assertEqual(code, EXIT_LOST)
