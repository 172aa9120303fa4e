"""
C{qmailtx queue}: the qmail-queue program (spec/queue.md §1, §3).

Message on fd 0, envelope on fd 1, nothing printed, qmail-queue's exit codes.  The qmail
root is the working directory (as qmail's callers arrange) or C{--root DIR}.  Lets outside
programs inject whether the daemon runs or not; writes only through L{qmailtx.queue}.

Run by a user who cannot write C{queue/} (not its owner: a forward delivered as the mailbox
owner when the daemon runs as root, or a user's sendmail), it hands fd 0 and fd 1 to the
daemon's queue socket (L{qmailtx.queuesocket}) instead and exits with the daemon's answer:
qmail made qmail-queue setuid for this; qmailtx's daemon queues for the caller's uid.
"""

import os
import signal
import socket

from twisted.internet.defer import maybeDeferred

from qmailtx.envelope import EnvelopeError, EnvelopeReader
from qmailtx.queue import Queue
from qmailtx.queueframe import (ANSWER_LIMIT, CHUNK_LIMIT, MESSAGE_END, encodeChunk,
                                parseAnswer)
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


SOCKET_PATH = os.path.join("public", "qmail-queue")
"""The daemon's queue socket relative to the root (L{qmailtx.queuesocket.socketPath})."""
EXIT_LOST = 74
"""The daemon went away before answering: qmail's 'communication with mail server failed'."""


def _ownsQueue():
    try:
        return os.stat("queue").st_uid == os.geteuid()
    except OSError:
        return False


def enqueue(root, messageFd=0, envelopeFd=1):
    """
    Run qmail-queue's steps in C{root} (this changes the working directory); returns its
    exit code.  Not the queue's owner, or unable to create files in it, it hands the message
    to the daemon's queue socket if one answers there.
    """
    try:
        os.chdir(root)
    except OSError:
        return 61
    triedSocket = False
    if not _ownsQueue():
        triedSocket = True
        code = handOff(SOCKET_PATH, messageFd, envelopeFd)
        if code is not None:
            return code
    writer = None
    if not (os.path.isdir("queue") and os.access("queue", os.X_OK)):
        code = 62
    else:
        try:
            writer = Queue(".", runBlocking=_syncRun).begin(b"by uid %d" % os.getuid(),
                                                           eager=True)
        except (TempFailure, PermFailure) as f:
            code = _exitCode(f, 63)
    if writer is None:
        if not triedSocket:
            handed = handOff(SOCKET_PATH, messageFd, envelopeFd)
            if handed is not None:
                return handed
        return code
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


class _ReadError(Exception):
    """Our own fd 0 or fd 1 could not be read (qmail-queue's exit 54)."""


def handOff(path, messageFd=0, envelopeFd=1):
    """
    Send the message on C{messageFd} and the envelope on C{envelopeFd} to the queue socket
    at C{path} (framed as L{qmailtx.queueframe} says) and return the daemon's exit code;
    C{None}, having read nothing, when no daemon accepts the connection.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    with sock:
        try:
            _sendMessage(sock, messageFd)
            _sendEnvelope(sock, envelopeFd)
            sock.shutdown(socket.SHUT_WR)
        except _ReadError:
            return 54
        except OSError:
            pass  # the daemon answered early and closed; its answer says why
        return _readAnswer(sock)


def _read(fd, size):
    try:
        return os.read(fd, size)
    except OSError:
        raise _ReadError()


def _sendMessage(sock, fd):
    while True:
        data = _read(fd, CHUNK_LIMIT)
        if not data:
            sock.sendall(MESSAGE_END)
            return
        sock.sendall(encodeChunk(data))


def _sendEnvelope(sock, fd):
    """Pass the envelope on as read, up to its final C{\\0} (the daemon judges it)."""
    reader = EnvelopeReader()
    while True:
        data = _read(fd, READ_SIZE)
        if not data:
            return
        sock.sendall(data)
        try:
            if reader.feed(data):
                return
        except EnvelopeError:
            return


def _readAnswer(sock):
    answer = b""
    while len(answer) < ANSWER_LIMIT:
        try:
            data = sock.recv(ANSWER_LIMIT)
        except OSError:
            break
        if not data:
            break
        answer += data
        code = parseAnswer(answer)
        if code is not None:
            return code
    return EXIT_LOST


def main(argv):
    signal.signal(signal.SIGALRM, _die)
    signal.alarm(DEATH)
    os.umask(0o033)
    for fd in (0, 1):
        # Closed, the number would go to the next file or socket opened (the daemon's
        # queue socket), which would then be read as the message or the envelope.
        try:
            os.fstat(fd)
        except OSError:
            return 54
    try:
        root = parseRoot(list(argv[1:]))
        from qmailtx.scripts.qmqpc import nullClient  # null-client mode: control/qmqpservers
        code = nullClient(root)
        return enqueue(root) if code is None else code
    except MemoryError:
        return 51
    except Exception:
        return 81
