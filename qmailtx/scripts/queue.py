"""
C{qmailtx queue}: the qmail-queue program (spec/queue.md §1, §3).

Message on fd 0, envelope on fd 1, nothing printed, qmail-queue's exit codes.  The qmail
root is the working directory (as qmail's callers arrange) or C{--root DIR}.  Lets outside
programs inject whether the daemon runs or not; writes only through L{qmailtx.queue}.
"""

import os
import signal

from twisted.internet.defer import maybeDeferred

from qmailtx.envelope import EnvelopeError, EnvelopeReader
from qmailtx.queue import Queue
from qmailtx.results import PermFailure, TempFailure, qqExitCode

DEATH = 86400
"""qmail-queue's self-destruct timer (exit 52); below qmail-send's 36 h cleanup age."""
READ_SIZE = 64 * 1024


def _syncRun(f, *args):
    """Disk work runs inline: there is no reactor in this process."""
    return maybeDeferred(f, *args)


def _die(signum, frame):
    os._exit(52)


def parseRoot(args):
    """The root from C{--root DIR} / C{--root=DIR}, else C{"."}; other words are ignored, as qmail-queue ignores them."""
    root = "."
    while args:
        arg = args.pop(0)
        if arg == "--root" and args:
            root = args.pop(0)
        elif arg.startswith("--root="):
            root = arg[len("--root="):]
    return root


def _exitCode(failure, troubleCode):
    """
    The exit code for a queue failure; the five 'trouble creating files' codes share one
    text, so the step that failed picks the code.
    """
    code = qqExitCode(failure)
    return troubleCode if code == 62 else code


def enqueue(root, messageFd=0, envelopeFd=1):
    """Run qmail-queue's steps in C{root} (this changes the working directory); returns its exit code."""
    try:
        os.chdir(root)
    except OSError:
        return 61
    if not (os.path.isdir("queue") and os.access("queue", os.X_OK)):
        return 62
    try:
        writer = Queue(".", runBlocking=_syncRun).begin(b"by uid %d" % os.getuid(), eager=True)
    except (TempFailure, PermFailure) as f:
        return _exitCode(f, 63)
    code = _copyMessage(writer, messageFd)
    if code:
        writer.abort()
        return code
    reader = EnvelopeReader()
    try:
        while True:
            data = os.read(envelopeFd, READ_SIZE)
            if not data:
                break
            if reader.feed(data):
                break
        sender, recipients = reader.finish()
    except EnvelopeError as e:
        writer.abort()
        return e.code
    except OSError:
        writer.abort()
        return 54
    try:
        writer.commitSync(sender, recipients)
    except (TempFailure, PermFailure) as f:
        return _exitCode(f, 66)
    return 0


def _copyMessage(writer, fd):
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            return 54
        if not data:
            return 0
        writer.write(data)


def main(argv):
    signal.signal(signal.SIGALRM, _die)
    signal.alarm(DEATH)
    os.umask(0o033)
    try:
        root = parseRoot(list(argv[1:]))
        from qmailtx.scripts.qmqpc import nullClient  # null-client mode: control/qmqpservers
        code = nullClient(root)
        return enqueue(root) if code is None else code
    except MemoryError:
        return 51
    except Exception:
        return 81
