"""
Reading C{control/} the way qmail reads it (spec/control.md §1).

Three reader kinds (line, int, list), missing file means default, any other error is a
temporary failure (L{ControlError}).  Files are cached by their stat identity, so a
per-connection re-read (qmail-smtpd's behaviour) costs a C{stat} per file, and an edit
takes effect on the next connection without a restart.  Reads only; never imports
protocols or the queue.
"""

import os
from dataclasses import dataclass

from qmailtx.cdbfile import CdbFile


class ControlError(Exception):
    """A control file exists but cannot be read: a temporary failure for the caller."""


_MISSING = object()


def parseLine(data):
    """First line, trailing newline/space/tab stripped, leading whitespace kept."""
    line = data.split(b"\n", 1)[0]
    return line.rstrip(b" \t\r\n") if line.endswith(b"\r") else line.rstrip(b" \t\n")


def parseInt(data):
    """Leading ASCII digits of the first line, or C{None} (treated as absent)."""
    line = parseLine(data)
    digits = 0
    while digits < len(line) and 48 <= line[digits] <= 57:
        digits += 1
    return int(line[:digits]) if digits else None


def envUlong(value):
    """An environment variable read as qmail's C{scan_ulong} reads it (DATABYTES): its
    leading ASCII digits, 0 without any."""
    return parseInt(value.encode("ascii", "replace")) or 0


def parseList(data):
    """Every line, trailing whitespace stripped; empty lines and C{#} lines skipped."""
    out = []
    for line in data.split(b"\n"):
        line = line.rstrip(b" \t\r")
        if line and not line.startswith(b"#"):
            out.append(line)
    return out


def parseLowerSet(data):
    return frozenset(x.lower() for x in parseList(data))


class ControlDir:
    """
    The C{control/} directory of one qmail root, with a stat-keyed cache.

    @ivar path: the directory (str).
    """

    def __init__(self, path):
        self.path = path
        self._cache = {}

    def _raw(self, name):
        """File bytes, or C{_MISSING}; raises L{ControlError} for other errors."""
        full = os.path.join(self.path, name)
        try:
            st = os.stat(full)
        except FileNotFoundError:
            self._cache.pop(name, None)
            return _MISSING
        except OSError as e:
            raise ControlError(f"unable to read {full}: {e.strerror}")
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == ident:
            return cached[1]
        try:
            with open(full, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return _MISSING
        except OSError as e:
            raise ControlError(f"unable to read {full}: {e.strerror}")
        self._cache[name] = (ident, data)
        return data

    def exists(self, name):
        return self._raw(name) is not _MISSING

    def parsed(self, name, parser, default=None):
        """
        C{parser(bytes)} of the file, or C{default} if absent; the parsed value is cached
        while the file is unchanged, so per-connection readers share one object.
        """
        data = self._raw(name)
        if data is _MISSING:
            return default
        key = (name, parser)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is data:
            return cached[1]
        value = parser(data)
        self._cache[key] = (data, value)
        return value

    def line(self, name, default=None):
        return self.parsed(name, parseLine, default)

    def int(self, name, default):
        value = self.parsed(name, parseInt)
        return default if value is None else value

    def list(self, name, default=None):
        return self.parsed(name, parseList, default)

    def lowerSet(self, name, default=None):
        """A list file as a frozenset of lowercased entries (for case-insensitive matching)."""
        return self.parsed(name, parseLowerSet, default)

    def me(self):
        return self.line("me")

    def lineOrMe(self, name, literal=None):
        """C{name}'s first line, else C{me}, else C{literal} (qmail's usual default chain)."""
        value = self.line(name)
        if value is None:
            value = self.me()
        return literal if value is None else value

    def cdb(self, name):
        """A L{CdbFile} for C{name}, or C{None} if absent; cached like the text files."""
        data = self._raw(name)
        if data is _MISSING:
            return None
        key = ("cdb", name)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is data:
            return cached[1]
        try:
            cdb = CdbFile(data)
        except Exception as e:
            raise ControlError(f"unable to read {name}: {e}")
        self._cache[key] = (data, cdb)
        return cdb


@dataclass(frozen=True)
class SmtpControls:
    """
    What qmail-smtpd reads at session start (spec/smtp.md §1), as one snapshot.

    C{rcpthosts} is C{None} when the file is absent (every recipient allowed);
    C{badmailfrom} is a lowercased frozenset.
    """

    me: bytes
    greeting: bytes
    localiphost: bytes
    timeout: int
    rcpthosts: frozenset
    morercpthosts: object
    badmailfrom: frozenset
    databytes: int
    tlsCert: str
    qmtpMode: bool = False


def loadSmtpControls(controls):
    """
    Build L{SmtpControls}; raises L{ControlError} (C{421 unable to read controls}) when
    a file is unreadable or neither C{smtpgreeting} nor C{me} exists.
    """
    me = controls.me()
    greeting = controls.line("smtpgreeting", me)
    if greeting is None:
        raise ControlError("neither control/smtpgreeting nor control/me exists")
    localiphost = controls.line("localiphost", me)
    timeout = controls.int("timeoutsmtpd", 1200)
    if timeout <= 0:
        timeout = 1
    rcpthosts = controls.lowerSet("rcpthosts")
    morercpthosts = controls.cdb("morercpthosts.cdb") if rcpthosts is not None else None
    badmailfrom = controls.lowerSet("badmailfrom", frozenset())
    certPath = os.path.join(controls.path, "servercert.pem")
    return SmtpControls(
        me=me or b"",
        greeting=greeting,
        localiphost=localiphost,
        timeout=timeout,
        rcpthosts=rcpthosts,
        morercpthosts=morercpthosts,
        badmailfrom=badmailfrom,
        databytes=controls.int("databytes", 0),
        tlsCert=certPath if controls.exists("servercert.pem") else None,
    )
