"""
C{qmailtx qmqpc}: qmail-qmqpc, a drop-in queue program for null clients.

Same interface as qmail-queue (message on fd 0, envelope on fd 1, nothing printed,
qmail's exit codes) but the message goes to the first answering server of
C{control/qmqpservers} (spec/qmqp-qmtp.md §4.3); it adds no Received line and queues
nothing locally.  The qmail root is the working directory, or C{--root DIR};
C{--port N} (qmailtx extension, for tests and odd setups) replaces port 628.
"""

import os

from qmailtx import qmqpc
from qmailtx.control import ControlDir, ControlError

READ_SIZE = 64 * 1024


def _readAll(fd):
    chunks = []
    while True:
        data = os.read(fd, READ_SIZE)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def nullClient(root, messageFd=0, envelopeFd=1, port=qmqpc.PORT):
    """
    qmail-qmqpc's run for root C{root}: its exit code.  C{None} when C{control/qmqpservers}
    does not exist (not a null client), so C{qmailtx queue} can fall back to the queue.
    """
    controls = ControlDir(os.path.join(root, "control"))
    try:
        servers = qmqpc.nullClientServers(controls)
    except ControlError:
        return qmqpc.EXIT_CONFIG
    if servers is None:
        return None
    return send(servers, messageFd, envelopeFd, port)


def send(servers, messageFd=0, envelopeFd=1, port=qmqpc.PORT):
    """Read the message and envelope, hand them to C{servers}; qmail-qmqpc's exit code."""
    try:
        message = _readAll(messageFd)
        envelope = _readAll(envelopeFd)
    except MemoryError:
        return 51
    except OSError:
        return 54
    try:
        sender, recipients = qmqpc.parseEnvelope(envelope)
    except qmqpc.EnvelopeFormatError:
        return qmqpc.EXIT_FORMAT
    return qmqpc.qmqpSend(servers, message, sender, recipients, port=port).exitCode


def main(argv):
    args = list(argv[1:])
    root, port = ".", qmqpc.PORT
    while args:
        arg = args.pop(0)
        if arg == "--root" and args:
            root = args.pop(0)
        elif arg.startswith("--root="):
            root = arg[len("--root="):]
        elif arg == "--port" and args and args[0].isdigit():
            port = int(args.pop(0))
    if not os.path.isdir(root):
        return 61
    code = nullClient(root, port=port)
    return qmqpc.EXIT_CONFIG if code is None else code
