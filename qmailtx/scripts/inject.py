"""
C{qmailtx inject [--root DIR] [-nNaAhH] [-f sender] [recip ...]}: qmail-inject
(spec/tools.md §1).

Reads the message on stdin, completes and rewrites its header (L{qmailtx.inject}) and
queues it through the queue program, exactly as qmail-inject runs qmail-queue: the
program named by C{$QMAILQUEUE}, else C{qmailtx queue} (which hands the message to QMQP
in null-client mode), with the qmail root as working directory.  The root is a leading
C{--root DIR}, else C{$QMAILHOME}, else C{./qmail-root}.  Writes nothing itself.
"""

import os
import sys
import time

from qmailtx import inject
from qmailtx.control import ControlDir, ControlError, parseList
from qmailtx.localrun import injectForward
from qmailtx.scripts import common
from qmailtx.scripts.common import GetoptError, getopt
from qmailtx.scripts.deliverworker import defaultQueueCommand

READ_CHUNK = 65536
"""Bytes per read while the body is copied to the queue program or stdout."""
MFT_LIMIT = 1024 * 1024
"""Bytes of a C{QMAILMFTFILE} list file that are read."""


def takeRoot(args, environ):
    """Remove a leading C{--root DIR} / C{--root=DIR}; the root, else C{$QMAILHOME}, else C{./qmail-root}."""
    return common.takeRoot(args, environ, leading=True)


def _fatal(text, code):
    sys.stderr.buffer.write(b"qmail-inject: fatal: " + text)
    sys.stderr.flush()
    return code


def readMailFollowupFile(path):
    """The lowercased addresses of C{QMAILMFTFILE}, or C{None} if it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read(MFT_LIMIT)
    except FileNotFoundError:
        return None
    return frozenset(a.lower() for a in parseList(data))


class _Message:
    """
    The rewritten header, then the rest of stdin, what the queue program reads; a last
    line without its newline gets one, as qmail's headerbody gives every line one.
    """

    def __init__(self, head, stream):
        self.head, self.stream = head, stream
        self.last = head[-1:]

    def read(self, size):
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        if self.stream is None:
            return b""
        data = self.stream.read(size)
        if data:
            self.last = data[-1:]
            return data
        self.stream = None
        return b"\n" if self.last not in (b"", b"\n") else b""


def prepare(argv, environ, stdin, now=None, pid=None):
    """
    Parse qmail-inject's arguments and the message header.

    @return: C{(root, injection, head, queueIt)}: C{head} is the new header plus the
        body's start, C{queueIt} false for C{-n}.
    @raise inject.InjectError: usage, parse and control trouble.
    """
    args = [os.fsdecode(a) if isinstance(a, bytes) else a for a in argv[1:]]
    root = takeRoot(args, environ)
    mft = None
    mftPath = environ.get(b"QMAILMFTFILE")
    try:
        if mftPath is not None:
            mft = readMailFollowupFile(mftPath)
    except OSError:
        raise inject.InjectError(b"read error\n", 111)
    if not os.path.isdir(root):
        # qmail-inject's words for a failed chdir to its home, then which home and how to name another.
        raise inject.InjectError(b"internal bug: no qmail root at " + os.fsencode(root)
                                 + b" (give --root DIR or set QMAILHOME)\n", 111)
    controls = ControlDir(os.path.join(root, "control"))
    try:
        controls.me()
        settings = inject.Settings(environ, controls.lineOrMe,
                                   int(time.time()) if now is None else now,
                                   os.getpid() if pid is None else pid, mft)
    except ControlError:
        raise inject.InjectError(b"read error\n", 111)
    try:
        options, rest = getopt(args, "aAhHnNf:")
    except GetoptError as e:
        sys.stderr.write("qmail-inject: " + str(e) + "\n")
        raise inject.InjectError(b"", 100)
    strategy, sender, queueIt = None, None, True
    for letter, value in options:
        if letter in "aAhH":
            strategy = {"a": inject.ARGS, "h": inject.HEADER, "H": inject.BOTH}.get(letter)
        elif letter in "nN":
            queueIt = letter == "N"
        else:
            sender = os.fsencode(value)
    if strategy is None:
        strategy = inject.ARGS if rest else inject.HEADER
    injection = inject.Injection(settings, strategy, [os.fsencode(a) for a in rest], sender)
    try:
        fields, bodyStart = inject.readHeader(stdin.readline)
    except OSError:
        raise inject.InjectError(b"read error\n", 111)
    for field in fields:
        injection.headerField(field)
    head = injection.finishHeader(showReturnPath=not queueIt) + bodyStart
    return root, injection, head, queueIt


def queueMessage(root, environ, message, sender, recipients):
    """
    Run the queue program as qmail.c does.

    @return: C{(qp, report)}; C{report} is C{None} when queued, else qmail's D/Z text.
    """
    program = environ.get(b"QMAILQUEUE")
    command = [program] if program else defaultQueueCommand()
    return injectForward(command, root, dict(environ), b"", message, sender, recipients)


def run(argv, environ):
    """qmail-inject with C{environ} (bytes to bytes) as its environment; the exit code."""
    stdin = sys.stdin.buffer
    try:
        root, injection, head, queueIt = prepare(argv, environ, stdin)
    except inject.InjectError as e:
        return _fatal(e.text, e.code) if e.text else e.code
    message = _Message(head, stdin)
    if not queueIt:
        out = sys.stdout.buffer
        try:
            while True:
                chunk = message.read(READ_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
            out.flush()
        except OSError:
            return 111
        return 0
    _, report = queueMessage(root, environ, message, injection.sender,
                             injection.recipients)
    if report is None:
        return 0
    return _fatal(report[1:] + b"\n", 100 if report[:1] == b"D" else 111)


def main(argv):
    return run(argv, dict(os.environb))
