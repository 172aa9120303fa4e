"""
C{qmailtx forward [--root DIR] address ...}: qmail's forward (spec/local.md §10): queue
C{$DTLINE} plus the message on stdin for the addresses, with C{$NEWSENDER} as envelope
sender, through the queue program (C{$QMAILQUEUE}, else C{qmailtx queue}) run in the
qmail root (a leading C{--root DIR}, else C{$QMAILHOME}, else C{./qmail-root}).
Prints C{forward: qp N} and exits 0, or 100/111 with qmail's queue error text.
Writes nothing itself.
"""

import os
import sys

from qmailtx.scripts.bouncesaying import die
from qmailtx.scripts.inject import queueMessage, takeRoot


def injectWithDtline(name, root, environ, sender, recipients):
    """
    Queue DTLINE + stdin for C{recipients}; qmail's filters' ending: C{NAME: qp N} on
    success (returns C{None}), else the exit code after C{NAME: fatal: text}.
    """
    dtline = environ.get(b"DTLINE")
    if dtline is None:
        return None, die(100, name, ": fatal: DTLINE not set")
    message = os.fdopen(os.dup(0), "rb")
    try:
        qp, report = queueMessage(root, environ, _Prefixed(dtline, message), sender,
                                  recipients)
    finally:
        message.close()
    if report is not None:
        return None, die(100 if report[:1] == b"D" else 111, name, ": fatal: ", report[1:])
    return qp, None


class _Prefixed:
    def __init__(self, head, stream):
        self.head, self.stream = head, stream

    def read(self, size):
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.stream.read(size)


def main(argv):
    environ = dict(os.environb)
    args = list(argv[1:])
    root = takeRoot(args, environ)
    sender = environ.get(b"NEWSENDER")
    if sender is None:
        return die(100, "forward: fatal: NEWSENDER not set")
    qp, code = injectWithDtline("forward", root, environ, sender,
                                [os.fsencode(a) for a in args])
    if code is not None:
        return code
    sys.stderr.write("forward: qp %d\n" % qp)
    return 0
