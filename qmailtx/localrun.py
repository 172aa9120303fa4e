"""
The child processes of a local delivery: C{|program} lines in a fresh C{/bin/sh -c}, and
the queue program that injects forwards (spec/local.md §7, spec/queue.md §1).

Split out of L{qmailtx.deliver} so that module stays about the algorithm.  Blocking, for
the delivery process only.  Writes nothing itself; must not import the queue module,
Twisted or sockets.
"""

import os
import select
import signal
import subprocess
import time

from qmailtx.dotqmail import errorStr
from qmailtx.results import QQ_CRASHED, QQ_READ_ERROR, TempFailure, qqExitReport
from qmailtx.safeio import writeAll

OUTPUT_KEEP = 4096
"""Bytes of program output kept for the report (qmail-lspawn cuts reports at 3000)."""

READ_CHUNK = 65536
"""Bytes per read from a program's output pipe or the message file."""

POLL_INTERVAL = 0.2
"""Seconds between checks whether a program exited while a background child holds its output."""

QQ_ERROR_LIMIT = 255
"""Bytes of a notqmail queue program's fd-6 error text that are kept."""

CHILD_CRASHED = TempFailure(b"Aack, child crashed. (#4.3.0)\n")


def _keep(out, data):
    room = OUTPUT_KEEP - len(out)
    if room > 0:
        out += data[:room]


def _killGroup(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def runProgram(command, env, cwd, messageFd, out, timeout, clock=time.monotonic):
    """
    Run C{/bin/sh -c command} with the message (its fd, already at offset 0) on stdin, SIGPIPE
    default, its stdout and stderr appended to C{out}; kill its process group after
    C{timeout} seconds.

    @return: C{(exitStatus, None)}, or C{(None, failure)} when the shell could not be
        started or was killed by a signal.
    """
    readFd, writeFd = os.pipe()
    try:
        proc = subprocess.Popen(
            [b"/bin/sh", b"-c", command], stdin=messageFd, stdout=writeFd,
            stderr=writeFd, cwd=cwd, env=env, close_fds=True, start_new_session=True,
            restore_signals=True)
    except OSError as e:
        os.close(readFd)
        os.close(writeFd)
        what = b"Unable to run /bin/sh: " if e.errno != 11 else b"Unable to fork: "
        return None, TempFailure(what + errorStr(e.errno) + b". (#4.3.0)\n")
    os.close(writeFd)
    deadline = clock() + timeout
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                _killGroup(proc)
                break
            ready, _, _ = select.select([readFd], [], [], min(remaining, POLL_INTERVAL))
            if ready:
                data = os.read(readFd, READ_CHUNK)
                if not data:
                    break
                _keep(out, data)
            elif proc.poll() is not None:
                os.set_blocking(readFd, False)
                try:
                    _keep(out, os.read(readFd, READ_CHUNK))
                except BlockingIOError:
                    pass
                break
        try:
            status = proc.wait(max(deadline - clock(), 0))
        except subprocess.TimeoutExpired:
            _killGroup(proc)
            status = proc.wait()
    finally:
        os.close(readFd)
    if status < 0:
        return None, CHILD_CRASHED
    return status, None


def envelope(sender, recipients):
    """The queue program's fd-1 envelope: C{F<sender>\\0}, C{T<r>\\0} each, then C{\\0}."""
    return (b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0")


def injectForward(command, root, env, dtline, message, sender, recipients):
    """
    Queue DTLINE + the message for C{recipients} through the queue program (cwd C{root};
    message on fd 0, envelope on fd 1, notqmail's error text on fd 6).

    @return: C{(qp, None)} when queued, else C{(qp, report)} with the D/Z text qmail.c
        derives from the exit status.  C{qp} is the queue program's pid, as in qmail.
    """
    messageRead, messageWrite = os.pipe()
    envelopeRead, envelopeWrite = os.pipe()
    errorRead, errorWrite = os.pipe()

    def fd6():
        if errorWrite != 6:
            os.dup2(errorWrite, 6)
        else:
            os.set_inheritable(6, True)

    try:
        proc = subprocess.Popen(
            command, stdin=messageRead, stdout=envelopeRead, cwd=root, env=env,
            close_fds=False, preexec_fn=fd6, restore_signals=True)
    except OSError:
        for fd in (messageRead, messageWrite, envelopeRead, envelopeWrite, errorRead,
                   errorWrite):
            os.close(fd)
        return None, b"Zunable to exec qq (#4.3.0)"
    for fd in (messageRead, envelopeRead, errorWrite):
        os.close(fd)
    writeFailed = False
    try:
        writeAll(messageWrite, dtline)
        while True:
            chunk = message.read(READ_CHUNK)
            if not chunk:
                break
            writeAll(messageWrite, chunk)
    except OSError:
        writeFailed = True
    finally:
        os.close(messageWrite)
    try:
        if not writeFailed:
            writeAll(envelopeWrite, envelope(sender, recipients))
    except OSError:
        writeFailed = True
    finally:
        os.close(envelopeWrite)
    errorText = bytearray()
    try:
        while len(errorText) <= QQ_ERROR_LIMIT:
            chunk = os.read(errorRead, QQ_ERROR_LIMIT + 1)
            if not chunk:
                break
            errorText += chunk
    finally:
        os.close(errorRead)
    status = proc.wait()
    if status < 0:
        return proc.pid, QQ_CRASHED
    if status == 0:
        return proc.pid, QQ_READ_ERROR if writeFailed else None
    return proc.pid, qqExitReport(status, bytes(errorText[:QQ_ERROR_LIMIT]))
