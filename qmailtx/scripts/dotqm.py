"""
C{qmailtx dotqm [-v] [FILE]}: keep all of a user's (or virtual domain's) C{.qmail} and
C{.qmail-*} files from one central file, by default C{~/.dotqmrc}.

FILE has lines C{address action}: the address is a full address or just the local part
(C{default} for C{.qmail-default}); the action is one C{.qmail} line.  Several lines for one
address make a multi-line file, in order.  C{#} starts a comment; C{#include <file>} reads
another file (relative to the including one).  For a full address the local part is used,
minus a leading C{<login>-} (a user's own addresses); a virtual domain's local parts are
its extensions already.  A bare local part loses the same prefix; the login itself (alone
or as a full address) is the user's own address, C{~/.qmail} (so a virtual domain kept by
that user cannot have an extension equal to the login).

Every file written starts with L{MARKER}; C{dotqm} replaces and removes only such files, so a
hand-written C{.qmail-x} is never touched (a conflict is an error).  Files are written to a
temporary name no delivery can match, fsynced, made 0600 and renamed into place, while the
home directory carries the sticky bit (qmail-local defers during the update).  Writes only
C{.qmail} and C{.qmail-*} files in C{$HOME} (the passwd entry's home when C{$HOME} is unset
or empty).
"""

import getopt
import os
import pwd
import sys

from qmailtx.dotqmail import safeExt
from qmailtx.safeio import writeAll

MARKER = b"# written by qmailtx dotqm; edit the central file instead\n"
INCLUDE_DEPTH = 8
"""How deeply C{#include} may nest (a loop is an error long before memory is)."""

FILE_LIMIT = 1 << 20
"""Largest central (or included) file read."""


class DotqmError(Exception):
    def __init__(self, text, code=100):
        Exception.__init__(self, text)
        self.code = code


def extFor(address, login):
    """
    The extension an address maps to (lowercased, dots as colons: the file name's part), or
    C{b""} for the user's own address (C{~/.qmail}); C{None} for an empty local part.
    """
    local = address[:address.rfind(b"@")] if b"@" in address else address
    if not local:
        return None
    if login and local.lower() == login.lower():
        return b""
    if login and local.lower().startswith(login.lower() + b"-"):
        local = local[len(login) + 1:]
    return safeExt(local) or None


def dotqmailName(ext):
    """The file an extension's lines go to: C{.qmail} for the user's own address."""
    return b".qmail-" + ext if ext else b".qmail"


def _isInclude(line):
    """C{#include}, alone or followed by a blank or C{<}; C{#includes ...} is a comment."""
    rest = line[len(b"#include"):]
    return line.startswith(b"#include") and (not rest or rest[:1] in b" \t<")


def parse(path, login, depth=0, into=None):
    """C{{ext: [lines]}} from a central file and its includes, in order of appearance."""
    into = {} if into is None else into
    if depth > INCLUDE_DEPTH:
        raise DotqmError("#include nested too deeply at " + os.fsdecode(path))
    try:
        with open(path, "rb") as f:
            data = f.read(FILE_LIMIT + 1)
    except OSError as e:
        raise DotqmError(f"unable to read {os.fsdecode(path)}: {e.strerror}", 111)
    if len(data) > FILE_LIMIT:
        raise DotqmError(f"{os.fsdecode(path)} is too big")
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.strip(b" \t\r")
        where = f"{os.fsdecode(path)}:{number}"
        if _isInclude(line):
            name = line[len(b"#include"):].strip(b" \t")
            if name.startswith(b"<") and name.endswith(b">"):
                name = name[1:-1]
            if not name:
                raise DotqmError(f"{where}: #include needs a file name")
            name = os.path.join(os.path.dirname(os.fsencode(path)), name)
            parse(name, login, depth + 1, into)
            continue
        if not line or line.startswith(b"#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise DotqmError(f"{where}: no action for {os.fsdecode(parts[0])}")
        address, action = parts
        ext = extFor(address, login)
        if ext is None or b"/" in ext or b"\0" in action:
            raise DotqmError(f"{where}: unusable address {os.fsdecode(address)}")
        into.setdefault(ext, []).append(action)
    return into


def _managed(name):
    try:
        with open(name, "rb") as f:
            return f.read(len(MARKER)) == MARKER
    except OSError:
        return False


def _writeAtomically(name, data):
    tmp = b"%s.dotqm%d" % (name, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writeAll(fd, data)
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name)


def update(home, files, say):
    """Write C{files} (ext -> lines) into C{home}; remove our files that are gone."""
    wanted = {dotqmailName(ext): MARKER + b"".join(a + b"\n" for a in lines)
              for ext, lines in files.items()}
    for name in wanted:
        path = os.path.join(home, name)
        if os.path.lexists(path) and not _managed(path):
            raise DotqmError(f"{os.fsdecode(name)} exists and was not written by dotqm")
    old = os.stat(home).st_mode & 0o7777
    os.chmod(home, old | 0o1000)
    try:
        for name, data in sorted(wanted.items()):
            path = os.path.join(home, name)
            try:
                with open(path, "rb") as f:
                    if f.read() == data:
                        continue
            except OSError:
                pass
            _writeAtomically(path, data)
            say(b"wrote " + name)
        for name in sorted(os.listdir(home)):
            if (name == b".qmail" or name.startswith(b".qmail-")) and name not in wanted and \
                    _managed(os.path.join(home, name)):
                os.unlink(os.path.join(home, name))
                say(b"removed " + name)
        dirFd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirFd)
        finally:
            os.close(dirFd)
    finally:
        os.chmod(home, old)


def pwdHome():
    """The passwd entry's home (for C{$HOME} unset or empty; empty must not mean '.')."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def main(argv):
    try:
        opts, args = getopt.getopt(argv[1:], "v")
    except getopt.GetoptError:
        args = None
    if args is None or len(args) > 1:
        sys.stderr.write("dotqm: usage: qmailtx dotqm [-v] [FILE] (writes $HOME/.qmail and .qmail-*)\n")
        return 100
    verbose = bool(opts)
    home = os.environ.get("HOME") or pwdHome()
    if not home:
        sys.stderr.write(f"dotqm: fatal: no home directory: HOME is unset and uid "
                         f"{os.getuid()} has no passwd entry\n")
        return 111
    home = os.fsencode(home)
    path = os.fsencode(args[0]) if args else os.path.join(home, b".dotqmrc")
    try:
        login = os.fsencode(pwd.getpwuid(os.getuid()).pw_name)
    except KeyError:
        login = b""

    def say(text):
        if verbose:
            sys.stdout.buffer.write(b"dotqm: " + text + b"\n")

    try:
        update(home, parse(path, login), say)
    except DotqmError as e:
        sys.stderr.write(f"dotqm: fatal: {e}\n")
        return e.code
    except OSError as e:
        sys.stderr.write(f"dotqm: fatal: unable to update {os.fsdecode(home)}: {e.strerror}\n")
        return 111
    sys.stdout.flush()
    return 0
