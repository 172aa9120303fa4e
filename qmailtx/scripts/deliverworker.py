"""
C{qmailtx deliverworker [--uid N --gid N] [--root DIR] [--timeout SECS] [--fdsock N]}: a long-lived
qmail-local for one (uid, gid), spoken to by the local spawner over a socket (or stdin) and stdout.

Started as root it drops to C{uid}/C{gid} with no supplementary groups before reading
anything; a process that would still be root answers every request with qmail-lspawn's
C{Not allowed to perform deliveries as root.}  Umask 077, like qmail-local.

Protocol (one request at a time, in order): a request is one netstring holding the
netstrings C{deliver}, message path, user, homedir, local, dash, ext, domain, sender,
defaultdelivery; the answer is one netstring holding the report as qmail-send reads it
(C{K}/C{Z}/C{D} + text, spec/local.md §9) on stdout.  Without C{--fdsock} requests come
on stdin and the worker opens the message path itself; EOF on stdin ends it.  With
C{--fdsock N} (the spawner's way) each request comes on the Unix socket N in one message
together with the message's open descriptor (the spawner opens the queue file, as
qmail-lspawn does, so a worker running as the user never needs to read C{queue/}); the path
is then only a name, and EOF on the socket ends the worker.  The environment is the one
qmail-send was started with; programs inherit it.
"""

import os
import socket
import sys
import traceback

from qmailtx import netstring
from qmailtx.deliver import LocalDeliverer, LocalDelivery, reportFor
from qmailtx.scripts.common import ignoreGroupSignals
from qmailtx.scripts.newu import takeRoot

REQUEST_LIMIT = 1 << 20
"""Largest request accepted (paths and addresses; qmail's envelope limit is far smaller)."""

FIELDS = 10
SOCKET_READ = 65536
"""Bytes asked of the socket per read (a request is usually well under 1 KB)."""
SOCKET_FDS = 4
"""Descriptors accepted per read; one comes with each request, extras are closed."""
LENGTH_DIGITS = 8

ROOT_REFUSED = b"ZNot allowed to perform deliveries as root.\n"
NO_MESSAGE = b"Zqmail-spawn unable to open message. (#4.3.0)\n"
USAGE = "deliverworker: usage: qmailtx deliverworker [--uid N --gid N] [--root DIR] [--timeout SECS]\n"


def defaultQueueCommand():
    """argv of our own C{qmailtx queue} (the qmail-queue program)."""
    return [os.fsencode(sys.executable), b"-m", b"qmailtx.scripts.main", b"queue"]


def readRequest(stream):
    """The next request's fields, or C{None} at EOF; raises C{ValueError} on bad framing."""
    digits = b""
    while True:
        c = stream.read(1)
        if not c:
            if digits:
                raise ValueError("truncated request")
            return None
        if c == b":":
            break
        if not c.isdigit() or len(digits) > LENGTH_DIGITS:
            raise ValueError("bad request length")
        digits += c
    length = int(digits or b"0")
    if length > REQUEST_LIMIT:
        raise ValueError("request too long")
    payload = stream.read(length)
    if len(payload) != length or stream.read(1) != b",":
        raise ValueError("truncated request")
    return netstring.decodeAll(payload)


def answer(out, report):
    out.write(netstring.encode(report))
    out.flush()


def splitRequest(buffer):
    """
    C{(payload, rest)} when C{buffer} starts with a whole request netstring, C{None} while
    it is still short; raises C{ValueError} on bad framing.
    """
    colon = buffer.find(b":", 0, LENGTH_DIGITS + 2)
    if colon == -1:
        if len(buffer) > LENGTH_DIGITS + 1 or (buffer and not buffer.isdigit()):
            raise ValueError("bad request length")
        return None
    digits = buffer[:colon]
    if not digits.isdigit():
        raise ValueError("bad request length")
    length = int(digits)
    if length > REQUEST_LIMIT:
        raise ValueError("request too long")
    end = colon + 1 + length
    if len(buffer) <= end:
        return None
    if buffer[end:end + 1] != b",":
        raise ValueError("truncated request")
    return buffer[colon + 1:end], buffer[end + 1:]


class SocketRequests:
    """Requests from the spawner's socket, each with the descriptor sent alongside it."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.fds = []

    def next(self):
        """
        C{(fields, message file or None)}, or C{None} at EOF; raises C{ValueError} on bad
        framing.
        """
        while True:
            split = splitRequest(self.buffer) if self.buffer else None
            if split is not None:
                payload, self.buffer = split
                fd = self.fds.pop(0) if self.fds else None
                message = os.fdopen(fd, "rb") if fd is not None else None
                return netstring.decodeAll(payload), message
            data, fds, _, _ = socket.recv_fds(self.sock, SOCKET_READ, SOCKET_FDS)
            for fd in fds:
                os.set_inheritable(fd, False)
            self.fds.extend(fds)
            while len(self.fds) > 1:
                os.close(self.fds.pop())
            if not data:
                if self.buffer:
                    raise ValueError("truncated request")
                return None
            self.buffer += data


def handle(deliverer, fields, refuse=False, message=None):
    """One request's report bytes (never raises: unknown trouble is a temporary failure)."""
    if len(fields) != FIELDS or fields[0] != b"deliver":
        return b"ZInternal qmail-lspawn bug.\n"
    if refuse:
        return ROOT_REFUSED
    path = fields[1]
    d = LocalDelivery(*fields[2:])
    if message is None:
        try:
            message = open(path, "rb")
        except OSError:
            return NO_MESSAGE
    try:
        result = deliverer.deliver(d, message).report()
    except Exception:
        traceback.print_exc(file=sys.stderr)
        result = reportFor(None, b"", crashed=True)
    finally:
        message.close()
    return result.letter + result.text


def dropPrivileges(uid, gid):
    """Become C{uid}/C{gid} with no supplementary groups (only possible as root)."""
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def main(argv):
    # Killed mid-delivery, the message would be delivered again (and an mbox left with
    # half a message); the programs of |lines still start with the default actions.
    ignoreGroupSignals()
    args = list(argv[1:])
    root = takeRoot(args)
    uid = gid = fdsock = None
    timeout = 86400
    try:
        while args:
            arg = args.pop(0)
            if arg == "--uid":
                uid = int(args.pop(0))
            elif arg == "--gid":
                gid = int(args.pop(0))
            elif arg == "--timeout":
                timeout = int(args.pop(0))
            elif arg == "--fdsock":
                fdsock = socket.socket(fileno=int(args.pop(0)))
                fdsock.set_inheritable(False)
            else:
                raise ValueError(arg)
    except (ValueError, IndexError):
        sys.stderr.write(USAGE)
        return 100
    os.umask(0o077)
    if uid is not None:
        try:
            dropPrivileges(uid, gid if gid is not None else uid)
        except OSError as e:
            sys.stderr.write(f"deliverworker: fatal: unable to switch to uid {uid}: {e}\n")
            return 111
    refuse = os.getuid() == 0 or os.geteuid() == 0
    deliverer = LocalDeliverer(os.path.abspath(root), os.environb, defaultQueueCommand(),
                               programTimeout=timeout)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    requests = SocketRequests(fdsock) if fdsock is not None else None
    while True:
        message = None
        try:
            if requests is None:
                fields = readRequest(stdin)
            else:
                got = requests.next()
                fields, message = got if got is not None else (None, None)
        except (ValueError, OSError) as e:
            sys.stderr.write(f"deliverworker: fatal: {e}\n")
            return 111
        if fields is None:
            return 0
        if requests is not None and message is None:
            answer(stdout, NO_MESSAGE)
            continue
        answer(stdout, handle(deliverer, fields, refuse, message))
        if message is not None:
            message.close()
