"""
C{.qmail} files: which file governs an extension, what its lines mean, and the forwarding
sender (spec/local.md §6 steps 5-9 and §7).

Pure functions over an injected filesystem view (an object with C{read(name)} and
C{exists(name)}, see L{findDotQmail}), so the same rules serve delivery, C{qmailtx local -n}
and the unit tests.  Writes nothing; must not import the queue, Twisted or mailbox code.
"""

import errno
import os
import stat
from dataclasses import dataclass

from qmailtx.results import PermFailure, TempFailure
from qmailtx.users import isTemporaryErrno

DOTQMAIL_LIMIT = 1 << 20
"""Largest C{.qmail} file read (qmail slurps any size; a bigger one is surely an error)."""

PATRN = 0o002
"""conf-patrn: mode bits that make a home or C{.qmail} file unsafe (world-writable)."""

MAILDIR, MBOX, PROGRAM, FORWARD, FORWARDONLY = "maildir", "mbox", "program", "forward", "+list"

NO_MAILBOX = PermFailure(b"Sorry, no mailbox here by that name. (#5.1.1)\n")
WRITABLE_DOTQMAIL = TempFailure(b"Uh-oh: .qmail file is writable. (#4.7.0)\n")
BLANK_FIRST_LINE = TempFailure(b"Uh-oh: first line of .qmail file is blank. (#4.2.1)\n")
FILE_WITH_XBIT = TempFailure(b"Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)\n")
PROG_WITH_XBIT = TempFailure(b"Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)\n")
NO_MEMORY = TempFailure(b"Out of memory. (#4.3.0)\n")

_ERROR_TEXTS = {
    errno.EINTR: "interrupted system call", errno.ENOMEM: "out of memory",
    errno.ENOENT: "file does not exist", errno.ETXTBSY: "text busy",
    errno.EIO: "input/output error", errno.EEXIST: "file already exists",
    errno.ETIMEDOUT: "timed out", errno.EAGAIN: "temporary failure",
    errno.EPIPE: "broken pipe", errno.EPERM: "permission denied",
    errno.EACCES: "access denied", errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory", errno.EINVAL: "invalid argument",
    errno.ENFILE: "system cannot open more files", errno.EMFILE: "process cannot open more files",
    errno.EFBIG: "file too big", errno.ENOSPC: "out of disk space",
    errno.EROFS: "read-only file system", errno.ELOOP: "symbolic link loop",
    errno.ENAMETOOLONG: "file name too long", errno.EDQUOT: "disk quota exceeded",
    errno.ESTALE: "stale NFS file handle", errno.ENOLCK: "no locks available",
    errno.EOPNOTSUPP: "operation not supported",
}


def errorStr(code):
    """qmail's C{error_str()} wording for an errno (C{strerror} for the rare others)."""
    if code in _ERROR_TEXTS:
        return _ERROR_TEXTS[code].encode()
    return os.strerror(code or 0).encode()


def unableToOpen(name, e):
    return TempFailure(b"Unable to open " + name + b": " + errorStr(e.errno) + b". (#4.3.0)\n")


def safeExt(ext):
    """The extension as it appears in file names: lowercased, every C{.} made C{:}."""
    return ext.lower().replace(b".", b":")


def candidates(dash, ext):
    """
    The C{.qmail} names tried for C{dash}/C{ext}, in order, each with the C{DEFAULT} value
    it would set (C{None}: unset).  The exact name comes first; then C{...default} names
    from the longest prefix ending in C{-} down to the empty one.
    """
    safe = safeExt(ext)
    exact = b".qmail" + dash + safe
    default = ext[len(safe) - 7:] if safe.endswith(b"default") else None
    names = [(exact, default)]
    for i in range(len(safe), -1, -1):
        if i == 0 or safe[i - 1:i] == b"-":
            names.append((b".qmail" + dash + safe[:i] + b"default", ext[i:]))
    return names


@dataclass(frozen=True)
class DotQmail:
    """
    The file that governs a delivery.

    @ivar name: the file name, or C{None} when none exists (empty dash only).
    @ivar forwardOnly: the owner-execute bit was set.
    @ivar default: the C{DEFAULT} environment value, C{None} for unset.
    """

    name: bytes
    text: bytes
    forwardOnly: bool
    default: bytes


def _readCandidate(view, name):
    """The file's text and forward-only flag, C{None} if it does not count, or a failure."""
    try:
        found = view.read(name, DOTQMAIL_LIMIT)
    except OSError as e:
        if isTemporaryErrno(e.errno) or e.errno in (errno.EACCES, errno.EPERM):
            return unableToOpen(name, e)
        return None
    except MemoryError:
        return NO_MEMORY
    if found is None:
        return None
    mode, text = found
    if not stat.S_ISREG(mode):
        return None
    if mode & PATRN:
        return WRITABLE_DOTQMAIL
    return text, bool(mode & 0o100)


def findDotQmail(dash, ext, view):
    """
    Find the governing file (spec/local.md §6 steps 6-7).

    @param view: C{view.read(name, limit) -> (st_mode, bytes) | None}, raising C{OSError}
        as C{open} would (and C{MemoryError} above C{limit}).
    @return: a L{DotQmail}, or a failure value (L{NO_MAILBOX}, unsafe or unreadable file).
    """
    for name, default in candidates(dash, ext):
        found = _readCandidate(view, name)
        if found is None:
            continue
        if not isinstance(found, tuple):
            return found
        return DotQmail(name, found[0], found[1], default)
    if dash:
        return NO_MAILBOX
    return DotQmail(None, b"", False, None)


def newSender(sender, local, domain, dash, ext, view):
    """
    The envelope sender for forwards (NEWSENDER, spec/local.md §6 step 8): C{local-owner@domain}
    when C{.qmail<dash><ext>-owner} exists, the VERP form when C{-owner-default} exists too.

    @param view: C{view.exists(name) -> bool}, raising C{OSError} on trouble.
    """
    if sender in (b"", b"#@[]"):
        return sender
    base = b".qmail" + dash + safeExt(ext)

    def exists(name):
        try:
            return view.exists(name)
        except OSError as e:
            if isTemporaryErrno(e.errno):
                raise _Trouble(unableToOpen(name, e))
            return False

    try:
        if not exists(base + b"-owner"):
            return sender
        if exists(base + b"-owner-default"):
            return local + b"-owner-@" + domain + b"-@[]"
        return local + b"-owner@" + domain
    except _Trouble as t:
        return t.failure


class _Trouble(Exception):
    def __init__(self, failure):
        self.failure = failure


def instructionText(found, defaultDelivery):
    """
    The text to obey and the forward-only flag: the file, or C{defaultDelivery} (with
    forward-only cleared) when it is empty or absent; always ending in C{\\n}.
    """
    text, forwardOnly = found.text, found.forwardOnly
    if not text:
        text, forwardOnly = defaultDelivery, False
    if not text.endswith(b"\n"):
        text += b"\n"
    return text, forwardOnly


def parseLines(text):
    """
    The instructions of a C{.qmail} text, in order, as C{(kind, argument)}; comments and
    blank lines dropped, C{+list} kept as L{FORWARDONLY}.  A blank first line yields the
    single pair C{(None, BLANK_FIRST_LINE)}.
    """
    out = []
    lines = text.split(b"\n")
    if text.endswith(b"\n"):
        lines.pop()
    for index, line in enumerate(lines):
        line = line.split(b"\0", 1)[0].rstrip(b" \t")
        first = line[:1]
        if not line:
            if index == 0:
                return [(None, BLANK_FIRST_LINE)]
        elif first == b"#":
            pass
        elif first in (b".", b"/"):
            out.append((MAILDIR if line.endswith(b"/") else MBOX, line))
        elif first == b"|":
            out.append((PROGRAM, line[1:]))
        elif first == b"+":
            if line == b"+list":
                out.append((FORWARDONLY, b""))
        elif first == b"&":
            out.append((FORWARD, line[1:]))
        else:
            out.append((FORWARD, line))
    return out
