"""
qmail-local: one local delivery, inside a process that already runs as the user
(spec/local.md §5-9).

L{LocalDeliverer.deliver} follows qmail-local step by step (home checks, Delivered-To loop
check, C{.qmail} choice, then every line: mbox, maildir, C{|program} in a fresh
C{/bin/sh -c}, forwards injected last through the queue program) and returns an
L{Outcome}: qmail-local's exit code and report text.  One long-lived worker process can
call it for many messages (L{qmailtx.scripts.deliverworker}).

Writes only the user's mailboxes (through L{mbox} and L{maildir}); reads the user's home.
Must not import the queue module, Twisted or sockets: forwards go through the queue
I{program}, as qmail-local's do.
"""

import io
import os
import time
from dataclasses import dataclass

from qmailtx import dotqmail, maildir, mbox
from qmailtx.bounce import quoteAddress
from qmailtx.dotqmail import FORWARD, FORWARDONLY, MAILDIR, MBOX, PROGRAM, errorStr
from qmailtx.localrun import injectForward, runProgram
from qmailtx.results import Delivered, PermFailure, TempFailure

REPORT_LIMIT = 3000
"""qmail-lspawn's C{truncreport}: longer reports are cut."""

TOO_LONG = b"\nError report too long, sorry.\n"

USAGE = b"qmail-local: usage: qmail-local [ -nN ] user homedir local dash ext domain sender aliasempty\n"

LOOPING = PermFailure(b"This message is looping: it already has my Delivered-To line. (#5.4.6)\n")
HOME_WRITABLE = TempFailure(b"Uh-oh: home directory is writable. (#4.7.0)\n")
HOME_STICKY = TempFailure(b"Home directory is sticky: user is editing his .qmail file. (#4.2.1)\n")
REWIND = TempFailure(b"Unable to rewind message. (#4.3.0)\n")

HEADER_LINE_LIMIT = 1000
"""Bytes of a header line kept while looking for our Delivered-To line (longer lines cannot match)."""

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


@dataclass(frozen=True)
class LocalDelivery:
    """qmail-local's arguments: C{user homedir local dash ext domain sender aliasempty}."""

    user: bytes
    home: bytes
    local: bytes
    dash: bytes
    ext: bytes
    domain: bytes
    sender: bytes
    defaultDelivery: bytes


@dataclass(frozen=True)
class Outcome:
    """qmail-local's exit code and everything it (and its programs) printed."""

    exitCode: int
    output: bytes

    def report(self):
        """The spawner's view (spec/local.md §9) as a results value."""
        return reportFor(self.exitCode, self.output)


def reportFor(exitCode, output, crashed=False):
    """
    Map qmail-local's exit status and output to K/Z/D: text up to the first NUL, cut to
    2966 bytes plus a notice when longer than 3000; a crash is C{qmail-local crashed.}
    """
    if crashed:
        return TempFailure(b"qmail-local crashed.\n")
    text = output.split(b"\0", 1)[0]
    if len(text) > REPORT_LIMIT:
        text = text[:REPORT_LIMIT - len(TOO_LONG) - 3] + TOO_LONG
    if exitCode == 0:
        return Delivered(text)
    if exitCode in (111, 71, 74, 75):
        return TempFailure(text)
    return PermFailure(text)


def ufTime(now):
    """C{Thu Nov 21 19:26:00 2024}: UTC, day zero-padded (qmail's myctime, not asctime)."""
    t = time.gmtime(now)
    return b"%s %s %02d %02d:%02d:%02d %d" % (
        _DAYS[t.tm_wday], _MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
        t.tm_year)


def headerLines(local, domain, sender, now):
    """C{(DTLINE, RPLINE, UFLINE)} for one delivery, each ending in C{\\n} (spec §8)."""
    dtline = b"Delivered-To: " + (local + b"@" + domain).replace(b"\n", b"_") + b"\n"
    rpline = b"Return-Path: <" + quoteAddress(sender).replace(b"\n", b"_") + b">\n"
    fromName = sender.replace(b" ", b"-").replace(b"\t", b"-").replace(b"\n", b"-") \
        if sender else b"MAILER-DAEMON"
    ufline = b"From " + fromName + b" " + ufTime(now) + b"\n"
    return dtline, rpline, ufline


def _cutAtLastDot(host, end):
    dot = host.rfind(b".", 0, end)
    return dot if dot != -1 else end


def programEnvironment(base, d, newSender, default, lines):
    """
    The environment of C{|program} lines: C{base} (the daemon's own environment) plus
    every variable of spec/local.md §8.  C{DEFAULT} is set only when C{default} is not None.
    """
    env = {k: v for k, v in base.items() if k != b"DEFAULT"}
    ext = d.ext
    exts = [ext]
    for _ in range(3):
        dash = ext.find(b"-")
        ext = b"" if dash == -1 else ext[dash + 1:]
        exts.append(ext)
    cut2 = _cutAtLastDot(d.domain, len(d.domain))
    cut3 = _cutAtLastDot(d.domain, cut2)
    cut4 = _cutAtLastDot(d.domain, cut3)
    dtline, rpline, ufline = lines
    env.update({
        b"SENDER": d.sender, b"NEWSENDER": newSender,
        b"RECIPIENT": d.local + b"@" + d.domain,
        b"USER": d.user, b"HOME": d.home, b"HOST": d.domain,
        b"HOST2": d.domain[:cut2], b"HOST3": d.domain[:cut3], b"HOST4": d.domain[:cut4],
        b"LOCAL": d.local,
        b"EXT": exts[0], b"EXT2": exts[1], b"EXT3": exts[2], b"EXT4": exts[3],
        b"DTLINE": dtline, b"RPLINE": rpline, b"UFLINE": ufline,
    })
    if default is not None:
        env[b"DEFAULT"] = default
    return {k: v.split(b"\0", 1)[0] for k, v in env.items()}


class _Exit(Exception):
    def __init__(self, code, text):
        self.code = code
        self.text = text


def _fail(failure):
    raise _Exit(failure.exitCode, failure.text if failure.text.endswith(b"\n")
                else failure.text + b"\n")


class HomeView:
    """The current directory (the user's home) as L{dotqmail}'s filesystem view."""

    def read(self, name, limit):
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not (st.st_mode & 0o170000 == 0o100000):
                return st.st_mode, b""
            if st.st_size > limit:
                raise MemoryError(name)
            chunks = []
            while True:
                chunk = os.read(fd, limit + 1)
                if not chunk:
                    break
                chunks.append(chunk)
            return st.st_mode, b"".join(chunks)
        finally:
            os.close(fd)

    def exists(self, name):
        try:
            os.stat(name)
        except FileNotFoundError:
            return False
        return True


def rewound(fd):
    """
    A fresh reader of the message from byte 0.  Children move the shared file offset, so
    a buffered reader must never be reused across them.
    """
    try:
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        _fail(REWIND)
    return io.open(fd, "rb", closefd=False)


def checkLoop(message, dtline):
    """Raise L{LOOPING} if a header line (before the first empty line) equals C{dtline}."""
    try:
        while True:
            line = message.readline(HEADER_LINE_LIMIT)
            if not line.endswith(b"\n"):
                if len(line) < HEADER_LINE_LIMIT:
                    return
                while line and not line.endswith(b"\n"):
                    line = message.readline(HEADER_LINE_LIMIT)
                continue
            if len(line) <= 1:
                return
            if line == dtline:
                _fail(LOOPING)
    except OSError as e:
        _fail(TempFailure(b"Unable to read message: " + errorStr(e.errno) + b". (#4.3.0)"))


class LocalDeliverer:
    """
    Runs qmail-local deliveries in this process (which must already run as the user).

    @param root: the qmail root, the working directory of the queue program for forwards.
    @param environ: the environment qmail-send was started with (bytes to bytes); programs
        and the queue program inherit it, and C{QMAILQUEUE} in it names the queue program.
    @param queueCommand: argv of the default queue program.
    @param programTimeout: seconds before a C{|program} (its whole process group) is killed.
    """

    def __init__(self, root, environ, queueCommand, clock=time.time, programTimeout=86400):
        self.root = root
        self.environ = dict(environ)
        self.queueCommand = list(queueCommand)
        if self.environ.get(b"QMAILQUEUE"):
            self.queueCommand = [self.environ[b"QMAILQUEUE"]]
        self.clock = clock
        self.programTimeout = programTimeout

    def deliver(self, d, message, doit=True):
        """Deliver (or with C{doit=False} describe) one message; returns an L{Outcome}."""
        out = bytearray()
        try:
            self._deliver(d, message.fileno(), doit, out)
        except _Exit as e:
            out += e.text
            return Outcome(e.code, bytes(out))
        return Outcome(0, bytes(out))

    def _deliver(self, d, message, doit, out):
        if not d.home.startswith(b"/"):
            raise _Exit(100, USAGE)
        try:
            os.chdir(d.home)
        except OSError as e:
            raise _Exit(111, b"Unable to switch to " + d.home + b": " + errorStr(e.errno)
                        + b". (#4.3.0)\n")
        self._checkHome(doit, out)
        lines = headerLines(d.local, d.domain, d.sender, self.clock())
        dtline = lines[0]
        if doit:
            checkLoop(rewound(message), dtline)
        view = HomeView()
        found = dotqmail.findDotQmail(d.dash, d.ext, view)
        if not isinstance(found, dotqmail.DotQmail):
            _fail(found)
        newSender = dotqmail.newSender(d.sender, d.local, d.domain, d.dash, d.ext, view)
        if not isinstance(newSender, bytes):
            _fail(newSender)
        env = programEnvironment(self.environ, d, newSender, found.default, lines)
        text, forwardOnly = dotqmail.instructionText(found, d.defaultDelivery)
        counts = {"file": 0, "forward": 0, "program": 0}
        forwards = []
        for kind, arg in dotqmail.parseLines(text):
            if kind is None:
                _fail(arg)
            if kind == FORWARDONLY:
                forwardOnly = True
            elif kind in (MAILDIR, MBOX):
                counts["file"] += 1
                if forwardOnly:
                    _fail(dotqmail.FILE_WITH_XBIT)
                if not doit:
                    out += kind.encode() + b" " + arg + b"\n"
                elif kind == MAILDIR:
                    self._maildir(arg, lines, message)
                else:
                    self._mbox(arg, lines, message)
            elif kind == PROGRAM:
                counts["program"] += 1
                if forwardOnly:
                    _fail(dotqmail.PROG_WITH_XBIT)
                if not doit:
                    out += b"program " + arg + b"\n"
                elif self._program(arg, env, d.home, message, out):
                    break
            elif kind == FORWARD:
                counts["forward"] += 1
                if doit:
                    forwards.append(arg)
                else:
                    out += b"forward " + arg + b"\n"
        qp = None
        if forwards:
            qp = self._forward(lines[0], message, newSender, forwards, env)
        out += b"did %d+%d+%d\n" % (counts["file"], counts["forward"], counts["program"])
        if qp is not None:
            out += b"qp %d\n" % (qp,)

    def _checkHome(self, doit, out):
        try:
            st = os.stat(".")
        except OSError as e:
            raise _Exit(111, b"Unable to stat home directory: " + errorStr(e.errno)
                        + b". (#4.3.0)\n")
        if st.st_mode & dotqmail.PATRN:
            _fail(HOME_WRITABLE)
        if st.st_mode & 0o1000:
            if doit:
                _fail(HOME_STICKY)
            out += b"Warning: home directory is sticky.\n"

    def _maildir(self, path, lines, message):
        try:
            maildir.deliver(path, lines[1] + lines[0], rewound(message))
        except TempFailure as f:
            _fail(f)
        except OSError:
            _fail(TempFailure(maildir.TEMP_ERROR))

    def _mbox(self, path, lines, message):
        try:
            mbox.deliver(path, lines[2] + lines[1] + lines[0], rewound(message))
        except TempFailure as f:
            _fail(f)

    def _program(self, command, env, home, message, out):
        """Run one program line; C{True} when it exited 99 (stop processing lines)."""
        rewound(message)
        status, failure = runProgram(command, env, home, message, out, self.programTimeout)
        if failure is not None:
            _fail(failure)
        if status == 0:
            return False
        if status == 99:
            return True
        if status in (100, 64, 65, 70, 76, 77, 78, 112):
            raise _Exit(100, b"")
        raise _Exit(111, b"")

    def _forward(self, dtline, message, sender, recipients, env):
        qp, report = injectForward(self.queueCommand, self.root, env, dtline, rewound(message),
                                   sender, recipients)
        if report is not None:
            raise _Exit(100 if report[:1] == b"D" else 111,
                        b"Unable to forward message: " + report[1:] + b".\n")
        return qp
