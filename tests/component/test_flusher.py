"""
The flusher (L{qmailtx.flusher}) and its asking end (L{qmailtx.flushclient}): requests
waiting together share one syncfs, each gets its answer in order, a failed syncfs is
reported as failed, and when the flusher is gone every caller is told and later flushes
run in the caller's own thread.
"""

import os
import socket
import threading

from qmailtx.flushclient import FlushClient, flushVia
from qmailtx.flusher import DONE, FAILED, REQUEST, serve


class FakeReactor:
    def __init__(self):
        self.readers = set()

    def addReader(self, r):
        self.readers.add(r)

    def removeReader(self, r):
        self.readers.discard(r)


def test_waitingRequestsShareOneSyncfs(tmp_path):
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    calls = []
    failNext = []

    def syncfs(fd):
        calls.append(fd)
        if failNext:
            failNext.pop()
            raise OSError(5, "io")

    for _ in range(3):
        mine.send(REQUEST)
    dirFd = os.open(tmp_path, os.O_RDONLY)
    server = threading.Thread(target=serve, args=(theirs, syncfs, dirFd))
    server.start()
    mine.settimeout(10)
    assert [mine.recv(16) for _ in range(3)] == [DONE] * 3
    assert calls == [dirFd]
    failNext.append(True)
    mine.send(REQUEST)
    assert mine.recv(16) == FAILED
    mine.close()
    server.join(10)
    assert not server.is_alive()
    os.close(dirFd)
    theirs.close()


def test_aRequestDuringASyncfsWaitsForTheNextOne(tmp_path):
    """A request that arrives while syncfs runs is answered only by a syncfs begun after it."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    calls = []

    def syncfs(fd):
        calls.append(fd)
        if len(calls) == 1:
            mine.send(REQUEST)

    mine.send(REQUEST)
    dirFd = os.open(tmp_path, os.O_RDONLY)
    server = threading.Thread(target=serve, args=(theirs, syncfs, dirFd))
    server.start()
    mine.settimeout(10)
    assert mine.recv(16) == DONE
    assert mine.recv(16) == DONE
    assert len(calls) == 2
    mine.close()
    server.join(10)
    os.close(dirFd)
    theirs.close()


def test_finishingGetsTheAnswersAskedForThenEnds(tmp_path):
    """At shutdown the client stops asking, half-closes, still hears the answers it is owed,
    and its Deferred fires at the flusher's EOF; later flushes go to threads."""
    reactor = FakeReactor()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = FlushClient(reactor, mine)
    results = []
    client.flush().addCallbacks(lambda _: results.append("done"),
                                lambda f: results.append("failed"))
    finished = []
    client.finish().addCallback(finished.append)
    assert not client.running and finished == []
    assert theirs.recv(16) == REQUEST
    assert theirs.recv(16) == b""
    theirs.send(DONE)
    theirs.close()
    client.doRead()
    client.doRead()
    assert results == ["done"] and finished == [None]
    assert reactor.readers == set()


def test_clientAnswersInOrderAndFallsBackWhenTheFlusherIsGone():
    reactor = FakeReactor()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = FlushClient(reactor, mine)
    assert reactor.readers == {client}
    results = []
    for _ in range(3):
        client.flush().addCallbacks(lambda _: results.append("done"),
                                    lambda f: results.append(f.type.__name__))
    assert [theirs.recv(16) for _ in range(3)] == [REQUEST] * 3
    theirs.send(DONE)
    theirs.send(FAILED)
    client.doRead()
    assert results == ["done"]
    client.doRead()
    assert results == ["done", "OSError"]
    theirs.close()
    client.doRead()
    assert results == ["done", "OSError", "OSError"]
    assert not client.running and reactor.readers == set()
    ran = []
    flushVia(client, lambda f, *a: ran.append((f, a)), "syncFiles", 1, 2)
    assert ran == [("syncFiles", (1, 2))]
