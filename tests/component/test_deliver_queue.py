"""Forwards through the real queue program (C{qmailtx queue}) into a real queue."""

import os

from qmailtx.deliver import LocalDeliverer, LocalDelivery
from qmailtx.scripts.deliverworker import defaultQueueCommand


def test_forwardReachesTodo(qmailRoot, tmp_path, monkeypatch):
    """A forward is queued with DTLINE + message, sender NEWSENDER, and qp = the queue's pid."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / ".qmail").write_bytes(b"&a@x.org\n&b@y.org\n")
    (tmp_path / "mess").write_bytes(b"Subject: t\n\nhi\n")
    deliverer = LocalDeliverer(str(qmailRoot), {b"PATH": b"/usr/bin:/bin",
                                                b"PYTHONPATH": os.fsencode(os.pathsep.join(
                                                    __import__("sys").path))},
                               defaultQueueCommand())
    with open(tmp_path / "mess", "rb") as m:
        outcome = deliverer.deliver(LocalDelivery(
            b"joe", os.fsencode(home), b"joe", b"", b"", b"h.example", b"s@x", b"./Mailbox"), m)
    assert outcome.exitCode == 0
    qp = int(outcome.output.split(b"qp ")[1])
    [todo] = os.listdir(qmailRoot / "queue" / "todo")
    assert (qmailRoot / "queue" / "todo" / todo).read_bytes().endswith(
        b"p%d\0Fs@x\0Ta@x.org\0Tb@y.org\0" % qp)
    mess = qmailRoot / "queue" / "mess" / str(int(todo) % 23) / todo
    assert mess.read_bytes().split(b"\n", 1)[1] == b"Delivered-To: joe@h.example\nSubject: t\n\nhi\n"
