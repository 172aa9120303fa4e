"""
C{qmailtx bouncesaying error [program [arg ...]]}: qmail's bouncesaying filter
(spec/local.md §10), for C{.qmail} lines: with no program, or when the program exits 0,
print C{error} and exit 100 (the message bounces); program exit 111 defers (111);
any other exit lets delivery go on (0).

Also holds what condredirect, except and forward share: L{runFilterProgram} and
strerr-style messages.  Writes nothing.
"""

import os
import subprocess
import sys

from qmailtx.users import isTemporaryErrno

USAGE = "bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]"


def say(*parts):
    """strerr's message: the parts on stderr, then a newline."""
    sys.stderr.buffer.write(b"".join(os.fsencode(p) for p in parts) + b"\n")
    sys.stderr.flush()


def die(code, *parts):
    say(*parts)
    return code


def runFilterProgram(args):
    """
    Run C{args} (found on C{$PATH}) with this process's stdin, stdout and stderr.

    @return: its exit status; an exec failure counts as exit 111 when the error is
        temporary, else 100 (as the forked child of qmail's filters exits); C{None} when
        it was killed by a signal.
    """
    try:
        proc = subprocess.Popen(args, restore_signals=True)
    except OSError as e:
        return 111 if isTemporaryErrno(e.errno) else 100
    status = proc.wait()
    return None if status < 0 else status


def filterOutcome(name, status):
    """
    The filters' common verdict on the program: C{None} to act on exit 0, else the exit
    code to leave with (111 after a crash or a temporary error, 0 for any other exit).
    """
    if status is None:
        return die(111, name, ": fatal: child crashed")
    if status == 111:
        return die(111, name, ": fatal: temporary child error")
    return None if status == 0 else 0


def main(argv):
    if len(argv) < 2:
        return die(100, USAGE)
    if len(argv) > 2:
        code = filterOutcome("bouncesaying", runFilterProgram(argv[2:]))
        if code is not None:
            return code
    return die(100, argv[1])
