"""
A queueing process killed before any one of its file-system calls leaves only the states
of qmail's table (spec/queue.md §3), and the queue keeps working afterwards.
"""

import os

import pytest

from qmailtx import queue as queuemod
from qmailtx.queue import Queue
from qmailtx.queuelayout import createLayout

BODY = b"Subject: crash\n\n" + b"z" * 100000 + b"\n"
CALLS = ("open", "link", "unlink", "write", "fsync", "close", "truncate")


def _enqueueDyingAt(root, k):
    """In a forked child: enqueue one message, _exit before the k-th file-system call."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.WEXITSTATUS(status)
    try:
        count = [0]
        for name in CALLS:
            real = getattr(os, name)

            def wrapped(*a, _real=real, **kw):
                count[0] += 1
                if count[0] == k:
                    os._exit(7)
                return _real(*a, **kw)

            setattr(queuemod.os, name, wrapped)
        w = Queue(root).begin(b"by uid 0")
        w.write(BODY)
        w.commitSync(b"s@x", [b"r@y"])
        os._exit(0)
    except BaseException:
        os._exit(3)


def _states(root):
    """Per message id: (mess content, intd?, todo content or None); asserts no orphan intd/todo."""
    q = os.path.join(root, "queue")
    out = {}
    for sub in os.listdir(os.path.join(q, "mess")):
        for name in os.listdir(os.path.join(q, "mess", sub)):
            with open(os.path.join(q, "mess", sub, name), "rb") as f:
                out[name] = [f.read(), False, None]
    for name in os.listdir(os.path.join(q, "intd")):
        assert name in out, "intd without mess"
        out[name][1] = True
    for name in os.listdir(os.path.join(q, "todo")):
        assert name in out, "todo without mess"
        with open(os.path.join(q, "todo", name), "rb") as f:
            out[name][2] = f.read()
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_crashAtEveryStep(tmp_path):
    """
    For every k, a writer killed before its k-th call leaves S1 (nothing, perhaps a pid/
    file), S2 (+mess), S3 (+mess +intd) or S4 (+mess +todo, both complete); the last k
    kills nothing and leaves S4; a new message can always be queued afterwards.
    """
    seenQueued = seenCrashed = False
    for k in range(1, 200):
        root = str(tmp_path / str(k))
        os.mkdir(root)
        createLayout(os.path.join(root, "queue"))
        code = _enqueueDyingAt(root, k)
        assert code in (0, 7), code
        states = _states(root)
        for name, (mess, intd, todo) in states.items():
            if todo is not None:
                assert mess.endswith(BODY) and mess.startswith(b"Received: (qmail ")
                assert todo.endswith(b"Fs@x\0Tr@y\0") and todo.startswith(b"u")
                seenQueued = True
        w = Queue(root).begin(b"by uid 0")
        w.write(b"after\n")
        w.commitSync(b"a", [b"b"])
        if code == 0:
            assert any(t is not None for _, _, t in states.values())
            break
        seenCrashed = True
    assert seenQueued and seenCrashed
