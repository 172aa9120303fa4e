"""
The password file of the built-in checkpassword (C{qmailtx checkpassword}, kept by
C{qmailtx passwd}).

One line per login: C{login:hash:uid:gid:home}; uid and gid may be empty (the checker then
runs as whoever started it, which only suits an unprivileged daemon).  Hashes are salted
scrypt from the standard library, written C{scrypt$N$r$p$salt$digest} (base64), so neither
plaintext nor unsalted hashes are ever stored.  Lines starting with C{#} and empty lines are
kept verbatim.  Writes only the password file (temp, fsync, rename; mode 0600); must not
import Twisted.
"""

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
DIGEST_BYTES = 32
SCRYPT_MAXMEM = 64 * 1024 * 1024
"""Memory scrypt may use when verifying; bounds what a forged file could demand."""

FILE_LIMIT = 16 * 1024 * 1024
"""Largest password file read."""


class PasswdError(ValueError):
    """A line or hash that does not follow the format."""


def hashPassword(password, salt=None, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P):
    """The stored form of C{password} (bytes) with a fresh random salt."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=DIGEST_BYTES,
                            maxmem=SCRYPT_MAXMEM)
    return b"scrypt$%d$%d$%d$%s$%s" % (n, r, p, base64.b64encode(salt), base64.b64encode(digest))


def verifyPassword(password, stored):
    """True iff C{password} matches C{stored}; an empty password never does."""
    if not password:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split(b"$")
        if kind != b"scrypt":
            return False
        salt = base64.b64decode(salt, validate=True)
        digest = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password, salt=salt, n=int(n), r=int(r), p=int(p),
                             dklen=len(digest), maxmem=SCRYPT_MAXMEM)
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, digest)


@dataclass(frozen=True)
class Entry:
    login: bytes
    hash: bytes
    uid: int = None
    gid: int = None
    home: bytes = b""

    def format(self):
        uid = b"" if self.uid is None else b"%d" % self.uid
        gid = b"" if self.gid is None else b"%d" % self.gid
        return b":".join([self.login, self.hash, uid, gid, self.home])


def _optionalInt(text):
    if not text:
        return None
    if not text.isdigit():
        raise PasswdError("bad uid/gid")
    return int(text)


def parseLine(line):
    """An L{Entry}; the home is everything after the fourth C{:}."""
    fields = line.split(b":", 4)
    if len(fields) != 5 or not fields[0] or not fields[4].startswith(b"/"):
        raise PasswdError("unable to parse this line")
    return Entry(fields[0], fields[1], _optionalInt(fields[2]), _optionalInt(fields[3]),
                 fields[4])


def validLogin(login):
    return bool(login) and not any(c in login for c in b":\n\0")


class PasswdFile:
    """The file's lines in order; entries are looked up and replaced by login."""

    def __init__(self, lines=()):
        self.lines = list(lines)

    @classmethod
    def parse(cls, data):
        return cls(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"))

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                data = f.read(FILE_LIMIT + 1)
        except FileNotFoundError:
            return cls()
        if len(data) > FILE_LIMIT:
            raise PasswdError("password file too large")
        return cls.parse(data)

    def _index(self, login):
        for i, line in enumerate(self.lines):
            if line.startswith(login + b":"):
                return i
        return None

    def find(self, login):
        """The entry for C{login}, or C{None}; a malformed line is no entry."""
        if not validLogin(login):
            return None
        i = self._index(login)
        if i is None:
            return None
        try:
            return parseLine(self.lines[i])
        except PasswdError:
            return None

    def set(self, entry):
        if not validLogin(entry.login) or b"\n" in entry.home or not entry.home.startswith(b"/"):
            raise PasswdError("bad login or home")
        i = self._index(entry.login)
        if i is None:
            self.lines.append(entry.format())
        else:
            self.lines[i] = entry.format()

    def remove(self, login):
        i = self._index(login)
        if i is None:
            return False
        del self.lines[i]
        return True

    def entries(self):
        out = []
        for line in self.lines:
            if line and not line.startswith(b"#"):
                try:
                    out.append(parseLine(line))
                except PasswdError:
                    pass
        return out

    def serialize(self):
        return b"".join(line + b"\n" for line in self.lines)

    def save(self, path):
        """Atomic replace: write a temp file beside it (0600), fsync, rename."""
        tmp = "%s.tmp%d" % (os.fsdecode(path), os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(self.serialize())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
