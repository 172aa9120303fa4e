"""
C{qmailtx deliverworker [--uid N --gid N] [--root DIR] [--timeout SECS] [--fdsock N]}: a long-lived
qmail-local for one (uid, gid), spoken to by the local spawner over its stdin and stdout.

Started as root it drops to C{uid}/C{gid} with no supplementary groups before reading
anything; a process that would still be root answers every request with qmail-lspawn's
C{Not allowed to perform deliveries as root.}  Umask 077, like qmail-local.

Protocol (one request at a time, in order): a request is one netstring holding the
netstrings C{deliver}, message path, user, homedir, local, dash, ext, domain, sender,
defaultdelivery; the answer is one netstring holding the report as qmail-send reads it
(C{K}/C{Z}/C{D} + text, spec/local.md §9).  With C{--fdsock N}, the message arrives as an
open descriptor over the Unix socket N with each request (the spawner opens the queue file,
as qmail-lspawn does, so a worker running as the user never needs to read C{queue/}); the
path is then only a name.  EOF on stdin ends the worker.  The
environment is the one qmail-send was started with; programs inherit it.
"""

import os
import socket
import sys
import traceback

from qmailtx import netstring
from qmailtx.deliver import LocalDeliverer, LocalDelivery, reportFor
from qmailtx.scripts.newu import takeRoot

REQUEST_LIMIT = 1 << 20
"""Largest request accepted (paths and addresses; qmail's envelope limit is far smaller)."""

FIELDS = 10

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
        if not c.isdigit() or len(digits) > 8:
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


def receiveMessage(sock):
    """The message descriptor sent with a request, as a file, or C{None}."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        return None
    return os.fdopen(fds[0], "rb") if fds else None


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
    while True:
        try:
            fields = readRequest(stdin)
        except ValueError as e:
            sys.stderr.write(f"deliverworker: fatal: {e}\n")
            return 111
        if fields is None:
            return 0
        message = None
        if fdsock is not None:
            message = receiveMessage(fdsock)
            if message is None:
                answer(stdout, NO_MESSAGE)
                continue
        answer(stdout, handle(deliverer, fields, refuse, message))
        if message is not None:
            message.close()
