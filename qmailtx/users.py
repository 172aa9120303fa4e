"""
Who receives mail for a local part: C{users/assign}, C{users/cdb} and the passwd rules
(qmail-newu, qmail-lspawn's lookup and qmail-getpw; spec/local.md §1-4).

Pure policy: the cdb is any object with C{get()}, and passwd lookups and home-directory
owners come from injected callables, so the spawner decides where the I/O happens.  Reads
C{users/cdb} only through L{openUsersCdb}; writes nothing (C{qmailtx newu} builds the cdb
with L{cdbfile.buildCdb}).  Must not import the queue, delivery code or Twisted.
"""

import errno
import os
import pwd
from dataclasses import dataclass

from qmailtx.cdbfile import CdbFile
from qmailtx.results import Delivered, PermFailure, TempFailure

USERNAME_LIMIT = 32
"""qmail-getpw's C{GETPW_USERLEN}: only candidates shorter than this are looked up."""

BREAK = b"-"
"""conf-break: the user-extension delimiter."""

ALIAS_USER = b"alias"
"""The user that receives mail no other user claims (conf-users)."""

NO_HOST = PermFailure(b"Sorry, address must include host name. (#5.1.3)\n")
ROOT_DELIVERY = TempFailure(b"Not allowed to perform deliveries as root.\n")
NO_ALIAS = TempFailure(b"Unable to find alias user!\n")
CDB_TROUBLE = TempFailure(b"Trouble reading users/cdb in qmail-lspawn.\n")
PASSWD_TROUBLE = TempFailure(b"Temporary failure in qmail-lspawn.\n")
NFS_TROUBLE = TempFailure(b"NFS failure in qmail-local.\n")
BAD_RECORD = TempFailure(b"Internal qmail-lspawn bug.\n")

_TEMPORARY_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK", "EAGAIN",
        "EDEADLK", "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC", "ENETDOWN",
        "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS",
        "ETOOMANYREFS", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EPROCLIM",
        "EUSERS", "EDQUOT", "ESTALE", "ENOLCK",
    )
    if hasattr(errno, name)
)


def isTemporaryErrno(code):
    """qmail's C{error_temp()}: does this errno mean "try again later"?"""
    return code in _TEMPORARY_ERRNOS


class AssignFormatError(ValueError):
    """C{users/assign} is malformed (qmail-newu: C{bad format in users/assign})."""


@dataclass(frozen=True)
class Assignment:
    """One answer of the lookup: qmail-local's C{user homedir dash ext} plus uid and gid."""

    user: bytes
    uid: int
    gid: int
    home: bytes
    dash: bytes
    ext: bytes


@dataclass(frozen=True)
class PasswdEntry:
    """The parts of a passwd entry qmail-getpw uses, as bytes."""

    name: bytes
    uid: int
    gid: int
    home: bytes


def assignRecords(data):
    """
    The cdb records qmail-newu makes from C{users/assign} text, wildchars record last.

    @raise AssignFormatError: for every case qmail-newu calls bad format (no C{.} line,
        a NUL, no C{:} or one in the first byte, fewer than six further colons).
    """
    records = []
    wildchars = bytearray()
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        line = data[pos:] if end == -1 else data[pos:end + 1]
        if line[:1] == b".":
            break
        if end == -1 or b"\0" in line:
            raise AssignFormatError("bad format in users/assign")
        colon = line.find(b":")
        if colon <= 0:
            raise AssignFormatError("bad format in users/assign")
        if line[:1] == b"+":
            key = (b"!" + line[1:colon]).lower()
            if colon >= 2 and line[colon - 1] not in wildchars:
                wildchars.append(line[colon - 1])
        else:
            key = (b"!" + line[1:colon] + b"\0").lower()
        fields = line[colon + 1:].split(b":", 6)
        if len(fields) < 7:
            raise AssignFormatError("bad format in users/assign")
        records.append((key, b"\0".join(fields[:6])))
        pos = end + 1
    records.append((b"", bytes(wildchars)))
    return records


def _leadingNumber(field):
    digits = 0
    while digits < len(field) and 48 <= field[digits] <= 57:
        digits += 1
    return int(field[:digits]) if digits else 0


def parseAssignment(value):
    """
    Split a C{user\\0uid\\0gid\\0homedir\\0dash\\0ext} record as qmail-lspawn does
    (numbers by their leading digits, ext up to a NUL); L{BAD_RECORD} if fields are missing.
    """
    fields = value.split(b"\0")
    if len(fields) < 6:
        return BAD_RECORD
    return Assignment(
        user=fields[0],
        uid=_leadingNumber(fields[1]),
        gid=_leadingNumber(fields[2]),
        home=fields[3],
        dash=fields[4],
        ext=fields[5],
    )


def lookupCdb(cdb, local):
    """
    Find C{local} in a users/cdb (spec/local.md §3): simple key first, then wildcard
    prefixes longest first, only those ending in a wildchar (or the empty prefix).

    @return: an L{Assignment}, C{None} for no entry, or L{CDB_TROUBLE}/L{BAD_RECORD}.
    """
    try:
        wildchars = cdb.get(b"")
        if wildchars is None:
            return CDB_TROUBLE
        lower = (b"!" + local + b"\0").lower()
        value = cdb.get(lower)
        if value is not None:
            return parseAssignment(value)
        for i in range(len(lower) - 1, 0, -1):
            if i == 1 or lower[i - 1] in wildchars:
                value = cdb.get(lower[:i])
                if value is not None:
                    return parseAssignment(value + local[i - 1:])
    except Exception:
        return CDB_TROUBLE
    return None


def passwdCandidates(local):
    """
    qmail-getpw's user-name candidates, longest first: C{(name, dash, ext)} for LOCAL
    itself and each prefix ending just before a C{-}, lowercased, shorter than 32 bytes.
    """
    for end in range(len(local), 0, -1):
        if end < USERNAME_LIMIT and (end == len(local) or local[end:end + 1] == BREAK):
            if end == len(local):
                yield local.lower(), b"", b""
            else:
                yield local[:end].lower(), BREAK, local[end + 1:]


def lookupPasswd(local, getpwnam, homeOwner):
    """
    qmail-getpw: the first candidate whose passwd entry has uid != 0 and a home directory
    owned by that uid, else the C{alias} user with dash C{-} and ext = C{local}.

    @param getpwnam: C{name -> PasswdEntry | None}; raises C{OSError} on temporary trouble.
    @param homeOwner: C{path -> uid}; raises C{OSError} when the home cannot be stat'ed.
    @return: an L{Assignment}, or L{PASSWD_TROUBLE}, L{NFS_TROUBLE}, L{NO_ALIAS}.
    """
    try:
        for name, dash, ext in passwdCandidates(local):
            entry = getpwnam(name)
            if entry is None or entry.uid == 0:
                continue
            try:
                owner = homeOwner(entry.home)
            except OSError as e:
                if isTemporaryErrno(e.errno):
                    return NFS_TROUBLE
                continue
            if owner == entry.uid:
                return Assignment(entry.name, entry.uid, entry.gid, entry.home, dash, ext)
        entry = getpwnam(ALIAS_USER)
    except OSError:
        return PASSWD_TROUBLE
    if entry is None:
        return NO_ALIAS
    return Assignment(entry.name, entry.uid, entry.gid, entry.home, BREAK, local)


def assignRecipient(recipient, cdb, getpwnam, homeOwner):
    """
    The spawner's decision for one local recipient (spec/local.md §1): who delivers it.

    @param cdb: the users/cdb (object with C{get}), C{None} if absent, or L{CDB_TROUBLE}.
    @return: C{(Assignment, local, domain)}, or a result value: L{Delivered} with empty
        text for an empty local part (trashed), L{NO_HOST}, or a L{TempFailure}.
    """
    at = recipient.rfind(b"@")
    if at == -1:
        return NO_HOST
    local, domain = recipient[:at], recipient[at + 1:]
    if not local:
        return Delivered(b"")
    found = None
    if cdb is not None:
        if isinstance(cdb, TempFailure):
            return cdb
        found = lookupCdb(cdb, local)
    if found is None:
        found = lookupPasswd(local, getpwnam, homeOwner)
    if not isinstance(found, Assignment):
        return found
    if found.uid == 0:
        return ROOT_DELIVERY
    return found, local, domain


def openUsersCdb(path):
    """
    Read C{users/cdb} afresh, as qmail-lspawn does per delivery: a L{CdbFile}, C{None} if
    the file does not exist, L{CDB_TROUBLE} if it cannot be read.
    """
    try:
        return CdbFile.fromPath(path)
    except FileNotFoundError:
        return None
    except Exception:
        return CDB_TROUBLE


def systemGetpwnam(name):
    """C{getpwnam} over the system passwd database, in L{lookupPasswd}'s shape."""
    try:
        entry = pwd.getpwnam(os.fsdecode(name))
    except (KeyError, ValueError):
        return None
    return PasswdEntry(
        os.fsencode(entry.pw_name), entry.pw_uid, entry.pw_gid, os.fsencode(entry.pw_dir)
    )


def systemHomeOwner(path):
    """The uid owning C{path} (C{stat}, following links as qmail-getpw does)."""
    return os.stat(path).st_uid
