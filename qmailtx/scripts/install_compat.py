"""
C{qmailtx install-compat [--root ROOT] [--qmailtx PATH] DIR}: write qmail-named wrappers
into C{DIR/bin} (C{qmail-queue}, C{qmail-inject}, C{sendmail}, C{preline}, ...) so that
scripts, C{.qmail} lines and mail user agents written for qmail run unchanged.

Each wrapper is a two-line C{/bin/sh} script that execs the installed C{qmailtx} with
the tool's name and, for tools that read a qmail root, C{--root ROOT} (default: DIR
itself, the layout C{/var/qmail/bin} has).  Writes only C{DIR/bin}, each file through a
temporary name and a rename; a file there that it did not write is never replaced.
"""

import os
import shlex
import shutil
import sys

USAGE = "install-compat: usage: qmailtx install-compat [--root ROOT] [--qmailtx PATH] DIR\n"
MARK = "# written by qmailtx install-compat"
"""The line that makes a wrapper ours, so a later run may replace it."""
MARK_LIMIT = 4096
"""Bytes of an existing file read to look for L{MARK}."""

WRAPPERS = {
    "qmail-queue": ("queue", True),
    "qmail-inject": ("inject", True),
    "sendmail": ("sendmail", True),
    "preline": ("preline", False),
    "qmail-qread": ("qread", True),
    "mailq": ("mailq", True),
    "qmail-qstat": ("qstat", True),
    "maildirmake": ("maildirmake", False),
    "tcprules": ("tcprules", False),
    "tcprulescheck": ("tcprulescheck", False),
    "qmail-newu": ("newu", True),
    "qmail-pw2u": ("pw2u", True),
    "qmail-showctl": ("showctl", True),
    "qmail-qmqpc": ("qmqpc", True),
    "bouncesaying": ("bouncesaying", False),
    "condredirect": ("condredirect", True),
    "except": ("except", False),
    "forward": ("forward", True),
}
"""qmail's program name -> (qmailtx tool, whether it is given C{--root})."""


def qmailtxCommand():
    """
    How to run this installation's C{qmailtx}: the console script beside the running
    interpreter, else the one on C{$PATH}, else this interpreter with C{-m}.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "qmailtx")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("qmailtx")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "qmailtx.scripts.main"]


def wrapperText(name, command, root):
    """The sh script for qmail's C{name}: exec C{command TOOL [--root ROOT] "$@"}."""
    tool, takesRoot = WRAPPERS[name]
    words = list(command) + [tool] + (["--root", root] if takesRoot else [])
    return ("#!/bin/sh\n" + MARK + "\n"
            + "exec " + " ".join(shlex.quote(w) for w in words) + ' "$@"\n')


def isOurs(path):
    try:
        with open(path, "r", errors="replace") as f:
            return MARK in f.read(MARK_LIMIT)
    except FileNotFoundError:
        return True


def install(directory, root, command):
    """Write every wrapper into C{directory/bin}; raises C{OSError} or C{FileExistsError}."""
    bindir = os.path.join(directory, "bin")
    os.makedirs(bindir, 0o755, exist_ok=True)
    for name in WRAPPERS:
        path = os.path.join(bindir, name)
        if not isOurs(path):
            raise FileExistsError(f"{path} exists and was not written by install-compat")
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            f.write(wrapperText(name, command, root))
        os.chmod(temporary, 0o755)
        os.rename(temporary, path)


def main(argv):
    args = list(argv[1:])
    root, command = None, None
    while len(args) > 1 and args[0] in ("--root", "--qmailtx"):
        option, value = args.pop(0), args.pop(0)
        if option == "--root":
            root = value
        else:
            command = [os.path.abspath(value)]
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write(USAGE)
        return 100
    directory = os.path.abspath(args[0])
    root = os.path.abspath(root or directory)
    try:
        install(directory, root, command or qmailtxCommand())
    except OSError as e:
        sys.stderr.write(f"install-compat: fatal: {e}\n")
        return 111
    return 0
