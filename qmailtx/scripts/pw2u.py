"""
C{qmailtx pw2u [--root DIR] [-/ohHuUC] [-cCHAR]}: qmail-pw2u (spec/tools.md §7).

passwd lines on stdin become a C{users/assign} file on stdout, by qmail-getpw's rules, with
C{users/include}, C{exclude}, C{mailnames}, C{subusers} and C{append} from the root.
"""

import getopt
import os
import sys

from qmailtx.control import parseList
from qmailtx.users import ALIAS_USER

FATAL = "qmail-pw2u: fatal: "


class _Fatal(Exception):
    pass


def _readList(name):
    """A users/ list file as C{parseList} lines, C{None} if absent."""
    try:
        with open(name, "rb") as f:
            return parseList(f.read())
    except FileNotFoundError:
        return None
    except OSError:
        raise _Fatal("unable to read controls")


def _readLines(name):
    """Raw lines (each keeping its newline) of a file, C{None} if absent."""
    try:
        with open(name, "rb") as f:
            return f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return None
    except OSError:
        raise _Fatal("unable to read controls")


class Pw2u:
    """qmail-pw2u's state: options, the users/ files, and what it has seen so far."""

    def __init__(self, dash=b"-:", breakChar=b"-", noUpper=True, homeStrategy=2,
                 include=None, exclude=None, mailnames=None):
        self.dash = dash
        self.breakChar = breakChar
        self.noUpper = noUpper
        self.homeStrategy = homeStrategy
        self.include = None if include is None else {x.lower() for x in include}
        self.exclude = None if exclude is None else {x.lower() for x in exclude}
        self.mailnames = {}
        for line in mailnames or []:
            if b":" in line:
                key, value = line.split(b":", 1)
                self.mailnames[key.lower()] = value
        self.users = {}
        self.sawAlias = False

    def account(self, line):
        """Output lines for one passwd line (possibly none)."""
        if b"\0" in line:
            return b""
        fields = line.split(b":")
        if len(fields) < 7:
            return b""
        user, uidText, gidText, home = fields[0], fields[2], fields[3], fields[5]
        digits = len(uidText) - len(uidText.lstrip(b"0123456789"))
        uid = int(uidText[:digits]) if digits else 0
        if uid == 0:
            return b""
        if self.noUpper and user.lower() != user:
            return b""
        if self.include is not None and user.lower() not in self.include:
            return b""
        if self.exclude is not None and user.lower() in self.exclude:
            return b""
        if self.homeStrategy:
            try:
                owner = os.stat(home).st_uid
            except FileNotFoundError:
                if self.homeStrategy == 1:
                    raise _Fatal("unable to stat " + os.fsdecode(home))
                return b""
            except OSError:
                raise _Fatal("unable to stat " + os.fsdecode(home))
            if owner != uid:
                return b""
        uugh = b":" + user + b":" + uidText + b":" + gidText + b":" + home + b":"
        self.users.setdefault(user.lower(), uugh)
        out = []
        if user == ALIAS_USER:
            out.append(b"+" + uugh + self.dash + b":\n")
            self.sawAlias = True
        names = self.mailnames.get(user.lower(), user)
        for name in names.split(b":"):
            if not name:
                continue
            out.append(b"=" + name + uugh + b"::\n")
            if self.breakChar:
                out.append(b"+" + name + self.breakChar + uugh + self.dash + b":\n")
        return b"".join(out)

    def subuser(self, line):
        fields = line.split(b":")
        if len(fields) < 4:
            return b""
        sub, user, pre = fields[0], fields[1], fields[2]
        uugh = self.users.get(user.lower())
        if uugh is None:
            raise _Fatal("unable to find " + os.fsdecode(user) + " user for subuser")
        out = b"=" + sub + uugh + self.dash + pre + b":\n"
        if self.breakChar:
            out += b"+" + sub + self.breakChar + uugh + self.dash + pre + b"-:\n"
        return out


def main(argv):
    from qmailtx.scripts.newu import takeRoot
    args = list(argv[1:])
    root = takeRoot(args)
    try:
        opts, _ = getopt.getopt(args, "/ohHuUc:C")
    except getopt.GetoptError:
        return 100
    options = {"dash": b"-:", "breakChar": b"-", "noUpper": True, "homeStrategy": 2}
    for opt, value in opts:
        if opt == "-/":
            options["dash"] = b"-/:"
        elif opt in ("-o", "-h", "-H"):
            options["homeStrategy"] = {"-o": 2, "-h": 1, "-H": 0}[opt]
        elif opt in ("-u", "-U"):
            options["noUpper"] = opt == "-U"
        elif opt == "-c":
            options["breakChar"] = os.fsencode(value)[:1]
        elif opt == "-C":
            options["breakChar"] = b""
    out = sys.stdout.buffer
    try:
        try:
            os.chdir(root)
        except OSError:
            raise _Fatal("unable to chdir")
        pw = Pw2u(include=_readList("users/include"), exclude=_readList("users/exclude"),
                  mailnames=_readList("users/mailnames"), **options)
        for line in sys.stdin.buffer.read().split(b"\n"):
            out.write(pw.account(line))
        if not pw.sawAlias:
            raise _Fatal("unable to find alias user")
        for line in _readLines("users/subusers") or []:
            out.write(pw.subuser(line.rstrip(b"\n")))
        for line in _readLines("users/append") or []:
            out.write(line)
        out.write(b".\n")
        out.flush()
    except _Fatal as e:
        out.flush()
        sys.stderr.write(FATAL + str(e) + "\n")
        return 111
    return 0
