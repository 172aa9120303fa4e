"""
The QMQP client, qmail-qmqpc (spec/qmqp-qmtp.md §4.3): "mini-qmail" null-client mode.

When C{control/qmqpservers} exists, injectors hand each message to the first of those
servers that answers instead of queueing it locally, with qmail-qmqpc's exit codes (the
queue program's codes, spec/queue.md §1).  L{qmqpSend} is blocking, for command-line
tools; nothing here runs in the daemon's reactor.  Reads C{control/qmqpservers}; writes
nothing on disk.  Must not import the queue.
"""

import socket
from dataclasses import dataclass

from qmailtx import netstring
from qmailtx.results import qqExitReport

PORT = 628
CONNECT_TIMEOUT = 10
"""qmail-qmqpc: timeoutconn(..., 10)."""
TIMEOUT = 60
"""qmail-qmqpc: 60 s for each read and write once connected."""
REPLY_LIMIT = 1024
"""Bytes of a server reply kept for the report (qmail-qmqpc reads only its first letter)."""

EXIT_OK = 0
EXIT_PERM = 31
EXIT_CONFIG = 55
EXIT_TEMP = 71
EXIT_TIMEOUT = 72
EXIT_REFUSED = 73
EXIT_CONNECTION = 74
EXIT_FORMAT = 91

_LETTERS = {75: EXIT_OK, 90: EXIT_TEMP, 68: EXIT_PERM}  # K, Z, D


@dataclass(frozen=True)
class QmqpResult:
    """
    The outcome of one injection: C{exitCode} as qmail-qmqpc exits, and C{report}, the
    server's reply (C{Kok …}, C{Z…}, C{D…}) when one was read, else qmail's text for the
    exit code (C{Zconnection to mail server rejected (#4.4.1)}, ...).
    """

    exitCode: int
    report: bytes
    server: str = None


def isDottedQuad(text):
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and p.isascii() and int(p) < 256 for p in parts)


def parseServers(lines):
    """The lines of C{qmqpservers} that are dotted-decimal IPv4 addresses, in order."""
    out = []
    for line in lines:
        text = line.decode("ascii", "replace").strip() if isinstance(line, bytes) else line
        if isDottedQuad(text):
            out.append(text)
    return out


def nullClientServers(controls):
    """
    The QMQP servers if C{control/qmqpservers} exists (null-client mode), else C{None}.
    Raises L{qmailtx.control.ControlError} if the file exists but cannot be read.
    """
    lines = controls.list("qmqpservers")
    return None if lines is None else parseServers(lines)


def package(message, sender, recipients):
    """The QMQP request: one netstring holding message, sender and each recipient."""
    return netstring.encode(
        netstring.encode(message) + netstring.encode(sender) + netstring.encodeList(recipients))


class EnvelopeFormatError(ValueError):
    """The fd-1 envelope is not C{F…\\0} C{T…\\0}… C{\\0}: qmail-qmqpc exits 91."""


def parseEnvelope(data):
    """
    C{(sender, recipients)} from a whole envelope, as qmail-qmqpc reads it: no length
    limit of its own (the server has one), anything after the final C{\\0} ignored.
    """
    fields = data.split(b"\0")
    if len(fields) < 2 or fields[0][:1] != b"F":
        raise EnvelopeFormatError("envelope must start with F")
    sender = fields[0][1:]
    recipients = []
    for field in fields[1:-1]:
        if not field:
            return sender, recipients
        if field[:1] != b"T":
            raise EnvelopeFormatError("recipient records start with T")
        recipients.append(field[1:])
    raise EnvelopeFormatError("envelope ended before its final NUL")


def _readReply(sock):
    """The exit code from the first K/Z/D byte, and the reply text for the report."""
    seen = b""
    while True:
        data = sock.recv(4096)
        if not data:
            return EXIT_CONNECTION, None
        seen += data
        for i, byte in enumerate(seen):
            if byte in _LETTERS:
                return _LETTERS[byte], _replyText(sock, seen, i)
        seen = seen[-16:]


def _replyText(sock, seen, letterAt):
    """Best effort: the rest of the reply netstring, for messages; never changes the code."""
    colon = seen.rfind(b":", 0, letterAt)
    try:
        length = int(seen[:colon]) if colon >= 0 else None
    except ValueError:
        length = None
    text = seen[letterAt:]
    try:
        while length is None or len(text) < length:
            if len(text) >= REPLY_LIMIT:
                break
            data = sock.recv(4096)
            if not data:
                break
            text += data
    except OSError:
        pass
    if length is not None:
        text = text[:length]
    return text[:REPLY_LIMIT].rstrip(b",")


def qmqpSend(servers, message, sender, recipients, timeout=TIMEOUT,
             connectTimeout=CONNECT_TIMEOUT, port=PORT):
    """
    Hand one message to the first QMQP server that accepts a connection, as
    qmail-qmqpc does; returns a L{QmqpResult}.

    A refused connection remembers 73, a connect timeout 72, and the next server is
    tried; once connected, the first C{K}/C{Z}/C{D} in the reply decides (0/71/31) and a
    broken connection is 74 with no further server tried.  No server at all: 55.
    """
    request = package(message, sender, recipients)
    lastError = EXIT_CONFIG
    for server in servers:
        if not isDottedQuad(server):
            continue
        try:
            sock = socket.create_connection((server, port), timeout=connectTimeout)
        except socket.timeout:
            lastError = EXIT_TIMEOUT
            continue
        except OSError:
            lastError = EXIT_REFUSED
            continue
        try:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            code, reply = _readReply(sock)
        except OSError:
            code, reply = EXIT_CONNECTION, None
        finally:
            sock.close()
        return QmqpResult(code, reply if reply else qqExitReport(code) or b"K", server)
    return QmqpResult(lastError, qqExitReport(lastError))
