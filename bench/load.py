"""
The clients of the benchmark: the SMTP load generator (bench/smtpload.c, built on first use)
and a holder of many idle connections.

The same clients serve every peer.  Writes only the built program, under the build directory
it is given.
"""

import errno
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("smtpload.c")
#: Upper bound on one batch, so a stuck peer cannot hang the run.
BATCH_TIMEOUT = 600
#: Longest greeting the idle holder reads before calling it broken.
BANNER_LIMIT = 4096


def buildClient(buildDirectory):
    """
    Compile smtpload.c unless an up-to-date binary is already there.

    @return: the path of the program.
    @raise RuntimeError: no C compiler, or the build failed.
    """
    buildDirectory = Path(buildDirectory)
    binary = buildDirectory / "smtpload"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler for bench/smtpload.c (run bench/setup.sh)")
    buildDirectory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(SOURCE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building smtpload failed:\n{result.stderr}")
    return binary


@dataclass
class Batch:
    """
    The outcome of one batch of messages.

    @ivar accepted: messages whose final dot got 250.
    @ivar failed: messages that did not.
    @ivar seconds: wall time of the whole batch.
    @ivar errors: the client's first complaints, if any.
    """
    accepted: int
    failed: int
    seconds: float
    errors: str = ""

    @property
    def rate(self):
        """
        Accepted messages per second.
        """
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def sendBatch(client, address, clients, messages, perConnection, size, recipient):
    """
    Send C{messages} messages of about C{size} bytes from C{clients} concurrent clients, each
    connection carrying exactly C{perConnection} of them.

    @type messages: a multiple of C{perConnection}.
    """
    if messages % perConnection:
        raise ValueError("messages must be a multiple of perConnection")
    argv = [str(client), address[0], str(address[1]), str(clients),
            str(messages // perConnection), str(perConnection), str(size), recipient]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=BATCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Batch(0, messages, float(BATCH_TIMEOUT), "batch timed out")
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    if result.returncode not in (0, 1) or "ok" not in fields:
        return Batch(0, messages, 0.0, result.stderr.strip() or f"exit {result.returncode}")
    return Batch(int(fields["ok"]), int(fields["failed"]), float(fields["seconds"]),
                 result.stderr.strip())


class IdleConnections:
    """
    Many SMTP connections that read their greeting and then say nothing.

    @ivar sockets: the connections that got a complete 220 greeting.
    @ivar errors: a count of failures by kind (C{"refused"}, C{"timeout"}, ...).
    """

    def __init__(self):
        self.sockets = []
        self.errors = {}

    def _fail(self, kind):
        """
        Count one failed connection of this kind.
        """
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def errorCount(self):
        """
        All failed connections, of every kind.
        """
        return sum(self.errors.values())

    def open(self, address, count, inFlight=64, timeout=60.0):
        """
        Open C{count} connections, at most C{inFlight} of them still connecting or waiting for
        their greeting at any time (a listen backlog is finite), and give up on the rest after
        C{timeout} seconds.
        """
        selector = selectors.DefaultSelector()
        pending = {}
        started = 0
        deadline = time.monotonic() + timeout
        while (started < count or pending) and time.monotonic() < deadline:
            while started < count and len(pending) < inFlight:
                started += 1
                s = socket.socket()
                s.setblocking(False)
                code = s.connect_ex(address)
                if code not in (0, errno.EINPROGRESS):
                    self._fail(errno.errorcode.get(code, str(code)))
                    s.close()
                    continue
                pending[s] = b""
                selector.register(s, selectors.EVENT_READ)
            for key, _ in selector.select(timeout=1.0):
                s = key.fileobj
                try:
                    data = s.recv(BANNER_LIMIT)
                except OSError as e:
                    data, kind = None, errno.errorcode.get(e.errno, str(e.errno))
                else:
                    kind = "closed" if not data else None
                if data:
                    buffered = pending[s] + data
                    lines = buffered.split(b"\r\n")
                    if len(buffered) > BANNER_LIMIT or not buffered.startswith(b"220"):
                        kind = "bad greeting"
                    elif any(line[3:4] == b" " for line in lines[:-1]):
                        selector.unregister(s)
                        del pending[s]
                        self.sockets.append(s)
                        continue
                    else:
                        pending[s] = buffered
                        continue
                selector.unregister(s)
                del pending[s]
                s.close()
                self._fail(kind)
        for s in pending:
            s.close()
            self._fail("timeout")
        selector.close()
        return self

    def stillOpen(self):
        """
        Count the held connections the server has neither closed nor written to since the
        greeting; the others are counted as errors (C{"dropped"}, C{"unexpected data"}).
        """
        alive = 0
        for s in self.sockets:
            try:
                data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                alive += 1
                continue
            except OSError:
                self._fail("dropped")
            else:
                self._fail("unexpected data" if data else "dropped")
        return alive

    def close(self):
        """
        Close every held connection (the server sees EOF, as from a client that gave up).
        """
        for s in self.sockets:
            s.close()
        self.sockets = []
