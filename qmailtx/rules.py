"""
tcprules: the rules syntax, its cdb encoding, and the lookup tcpserver does per connection.

Byte-compatible with ucspi-tcp 0.88 (spec/rules.md): L{compileRules} produces the same
C{(key, value)} pairs, in the same order, as the real C{tcprules}; L{Rules} answers the same
way as C{tcpserver -x} and C{tcprulescheck} from either the text file or a cdb written by
either tool.  L{RulesSource} re-reads a rules file when it changes.

Pure apart from reading the rules file in L{RulesSource} and logging a warning there; writes
nothing (the C{tcprules} tool writes the cdb through L{qmailtx.cdbfile}).  Must not import
protocols, the reactor, or services.
"""

import errno
import os
import stat
import struct
import time
from dataclasses import dataclass, field

from qmailtx import log
from qmailtx.cdbfile import CdbFile

# A rules file is read whole; this bounds the memory one reload may take (a /8 written out
# as single addresses is ~250 MB, so nobody sane is near this).
RULES_SIZE_LIMIT = 64 * 1024 * 1024

# tcprules reads numbers with djb's scan_ulong, which wraps at the width of unsigned long.
_ULONG_MODULUS = 1 << 64
_RANGE_TOP = 255

_DJB_ERRORS = {
    errno.EINTR: "interrupted system call",
    errno.ENOMEM: "out of memory",
    errno.ENOENT: "file does not exist",
    errno.ETXTBSY: "text busy",
    errno.EIO: "input/output error",
    errno.EEXIST: "file already exists",
    errno.ETIMEDOUT: "timed out",
    errno.EAGAIN: "temporary failure",
    errno.EPIPE: "broken pipe",
    errno.EPERM: "permission denied",
    errno.EACCES: "access denied",
    errno.EISDIR: "is a directory",
    errno.EBADF: "file descriptor not open",
    errno.EBUSY: "device busy",
    errno.EXDEV: "cross-device link",
    errno.ENOTDIR: "not a directory",
    errno.EINVAL: "invalid argument",
    errno.ENFILE: "system cannot open more files",
    errno.EMFILE: "process cannot open more files",
    errno.EFBIG: "file too big",
    errno.ENOSPC: "out of disk space",
    errno.ESPIPE: "unseekable descriptor",
    errno.EROFS: "read-only file system",
    errno.EMLINK: "too many links",
    errno.ELOOP: "symbolic link loop",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTEMPTY: "directory not empty",
    errno.EDQUOT: "disk quota exceeded",
    errno.ESTALE: "stale NFS file handle",
}


def djbErrorText(exc):
    """The words djb's C{error_str} uses for an C{OSError}, so our messages read like his."""
    return _DJB_ERRORS.get(getattr(exc, "errno", None), "unknown error")


class RulesError(Exception):
    """
    A rules file that cannot be used.  C{str()} is worded as tcprules/tcpserver word it.

    @ivar line: for a syntax error, the offending line (bytes, as tcprules prints it).
    @ivar path: the rules file, when known.
    """

    def __init__(self, message, line=None, path=None):
        Exception.__init__(self, message)
        self.line = line
        self.path = path


class RulesMissing(RulesError):
    """The rules file does not exist: tcpserver drops every connection until it does."""


def _syntaxError(line):
    return RulesError(
        "unable to parse this line: " + line.decode("utf-8", "surrogateescape"), line=line
    )


def _scanUlong(digits):
    """C{scan_ulong} on the whole of C{digits}, or C{None} if any byte is not a digit."""
    value = 0
    for b in digits:
        if not 48 <= b <= 57:
            return None
        value = (value * 10 + b - 48) % _ULONG_MODULUS
    return value


def parseInstructions(line, instructions):
    """
    The cdb value for C{allow}/C{deny} followed by C{,NAME=<q>value<q>} items; raises
    L{RulesError} naming C{line}.
    """
    if instructions.startswith(b"allow"):
        rest, value = instructions[5:], b""
    elif instructions.startswith(b"deny"):
        rest, value = instructions[4:], b"D\0"
    else:
        raise _syntaxError(line)
    records = [value]
    while rest:
        if rest[:1] != b",":
            raise _syntaxError(line)
        equals = rest.find(b"=")
        if equals < 0 or equals + 1 >= len(rest):
            raise _syntaxError(line)
        quote = rest[equals + 1 : equals + 2]
        end = rest.find(quote, equals + 2)
        if end < 0:
            raise _syntaxError(line)
        records.append(b"+" + rest[1 : equals + 1] + rest[equals + 2 : end] + b"\0")
        rest = rest[end + 1 :]
    return b"".join(records)


def expandAddress(line, address):
    """
    The keys tcprules stores for C{address}: itself, or one per number of the first
    C{lo-hi} range when the address has neither C{=} nor C{@}.
    """
    dash = address.find(b"-")
    if dash < 0 or b"=" in address or b"@" in address:
        return [address]
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right < 0:
        right = len(address)
    bottom = _scanUlong(address[left:dash])
    top = _scanUlong(address[dash + 1 : right])
    if bottom is None or top is None:
        raise _syntaxError(line)
    top = min(top, _RANGE_TOP)
    head, tail = address[:left], address[right:]
    return [head + b"%d" % n + tail for n in range(bottom, top + 1)]


def parseLine(line):
    """
    The C{(key, value)} pairs tcprules writes for one input line (without its newline);
    an empty list for comments, blank lines and lines without C{:}.
    """
    if line.startswith(b"#"):
        return []
    line = line.rstrip(b" \t\n")
    colon = line.find(b":")
    if colon < 0:
        return []
    value = parseInstructions(line, line[colon + 1 :])
    return [(key, value) for key in expandAddress(line, line[:colon])]


def compileRules(data):
    """Every C{(key, value)} pair, in file order, for a whole rules text (bytes)."""
    pairs = []
    for line in data.split(b"\n"):
        pairs.extend(parseLine(line))
    return pairs


def decodeRecords(value):
    """
    The C{\\0}-terminated records of a rules value, in order; a trailing unterminated
    fragment is ignored, as tcpserver ignores it.
    """
    return value.split(b"\0")[:-1]


def _text(raw):
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text):
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class RuleMatch:
    """
    The decision for one client.

    @ivar key: the rules key that matched (str), or C{None} when no key did (allow).
    @ivar deny: close the connection without a byte.
    @ivar env: variables the rule sets (str to str), applied over tcpserver's own.
    """

    key: object
    deny: bool
    env: dict = field(default_factory=dict)


ALLOW_BY_DEFAULT = RuleMatch(None, False, {})


def matchFromValue(key, value):
    """Decode a rules value as tcpserver applies it: C{D} denies, C{+NAME=v} sets NAME
    (an empty NAME is skipped: no program could be given it)."""
    deny = False
    env = {}
    for record in decodeRecords(value):
        if record[:1] == b"D":
            deny = True
        elif record[:1] == b"+":
            name, equals, val = record[1:].partition(b"=")
            if equals and name:
                env[_text(name)] = _text(val)
    return RuleMatch(_text(key), deny, env)


def candidateKeys(ip, host=None, info=None):
    """Keys in tcpserver's lookup order (spec/rules.md §3) for one client (bytes)."""
    ip = _bytes(ip)
    host = None if host is None else _bytes(host)
    info = None if info is None else _bytes(info)
    if info is not None:
        yield info + b"@" + ip
        if host is not None:
            yield info + b"@=" + host
    yield ip
    if host is not None:
        yield b"=" + host
    for end in range(len(ip), 0, -1):
        if ip[end - 1 : end] == b".":
            yield ip[:end]
    if host is not None:
        for start in range(len(host)):
            if host[start : start + 1] == b".":
                yield b"=" + host[start:]
        yield b"="
    yield b""


class Rules:
    """
    A compiled set of rules answering lookups, from rules text or from a tcprules cdb.

    Both forms keep only the first value stored under a key, which is the one cdb lookups
    return.
    """

    def __init__(self, get):
        self._get = get

    @classmethod
    def fromText(cls, data):
        """Parse rules text (bytes); raises L{RulesError} on the first bad line."""
        table = {}
        for key, value in compileRules(data):
            table.setdefault(key, value)
        return cls(table.get)

    @classmethod
    def fromCdb(cls, data):
        """Read a cdb (bytes) written by tcprules; raises L{RulesError} if it is not one."""
        if not looksLikeCdb(data):
            raise RulesError("unable to read rules: not a cdb file")
        return cls(CdbFile(data).get)

    def find(self, ip, host=None, info=None):
        """The first C{(key, value)} in lookup order (bytes), or C{None}."""
        for key in candidateKeys(ip, host, info):
            value = self._get(key)
            if value is not None:
                return key, value
        return None

    def lookup(self, ip, host=None, info=None):
        """The L{RuleMatch} for a client; no matching key means allow, no changes."""
        found = self.find(ip, host, info)
        if found is None:
            return ALLOW_BY_DEFAULT
        return matchFromValue(*found)


def looksLikeCdb(data):
    """
    Whether C{data} is a well-formed cdb: a 2048-byte table of 256 (position, slots)
    pairs all pointing inside the file.  Rules text never is: its first bytes read as a
    position far beyond any sane file.
    """
    if len(data) < 2048:
        return False
    header = struct.unpack("<512L", data[:2048])
    for i in range(0, 512, 2):
        pos, slots = header[i], header[i + 1]
        if pos < 2048 or pos + 8 * slots > len(data):
            return False
    return True


class _MonotonicClock:
    """A stand-in for C{IReactorTime.seconds} when no clock is given."""

    @staticmethod
    def seconds():
        return time.monotonic()


class _CheckEvery:
    """At most one check per C{interval} seconds of C{clock} time (a clock that went back
    counts as due), shared by the rules sources."""

    def __init__(self, clock, interval):
        self.clock = clock if clock is not None else _MonotonicClock()
        self.interval = interval
        self.mark()

    def mark(self):
        """Checked now."""
        self._at = self.clock.seconds()

    def due(self):
        """Whether the interval has passed since the last check (then: checked now)."""
        now = self.clock.seconds()
        if now - self._at >= self.interval or now < self._at:
            self._at = now
            return True
        return False


class RulesSource:
    """
    A rules file (text, or a cdb written by tcprules) that is re-read when it changes.

    The file's stat identity is checked at most once per C{interval} seconds of C{clock}
    time, so a busy listener costs one C{stat} a second, and an edit (or a tcprules
    rename) takes effect without a restart.

    @ivar path: the rules file (str).
    """

    def __init__(self, path, clock=None, interval=1.0, strict=True):
        """
        @param strict: raise L{RulesError} now if the file exists but cannot be used (a
            start-up error); otherwise that is what L{current} raises until it is fixed.
        """
        self.path = path
        self.isCdb = path.endswith(".cdb")
        self._every = _CheckEvery(clock, interval)
        self._identity = None
        self._rules = None
        self._problem = None
        self._refresh(initial=strict)
        self._every.mark()

    def _read(self, st):
        """Parse the file behind stat result C{st}; raises L{RulesError} or C{OSError}."""
        if st.st_size > RULES_SIZE_LIMIT or not stat.S_ISREG(st.st_mode):
            raise RulesError(
                f"unable to read {self.path}: not a regular file of at most"
                f" {RULES_SIZE_LIMIT} bytes",
                path=self.path,
            )
        with open(self.path, "rb") as f:
            data = f.read(RULES_SIZE_LIMIT + 1)
        if self.isCdb or looksLikeCdb(data) or b"\0" in data[:2048]:
            # Rules text has no NUL in its first lines; a cdb's table always has some, so
            # a cdb cut short (a copy caught half-way) is a bad cdb, not text without rules.
            return Rules.fromCdb(data)
        return Rules.fromText(data)

    def _refresh(self, initial=False):
        try:
            st = os.stat(self.path)
        except OSError as e:
            self._identity = None
            cls = RulesMissing if e.errno == errno.ENOENT else RulesError
            self._problem = cls(
                f"unable to read {self.path}: {djbErrorText(e)}", path=self.path
            )
            if initial and cls is not RulesMissing:
                raise self._problem
            return
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if identity == self._identity:
            return
        try:
            rules = self._read(st)
        except (OSError, RulesError) as e:
            unreadable = isinstance(e, OSError)
            if unreadable:
                e = RulesError(f"unable to read {self.path}: {djbErrorText(e)}")
            e.path = self.path
            if initial:
                raise e
            # A file that could not be read is tried again at the next check (the error
            # may pass: EMFILE under load, EIO); bad content waits for the next edit.
            self._identity = None if unreadable else identity
            if self._rules is None or unreadable:
                # A file that cannot be read drops connections, as tcpserver's would; one
                # whose content is bad (a typo, a cdb cut short) keeps the rules before it.
                self._problem = e
            else:
                self._problem = None
                log.warning(f"keeping the previous rules of {self.path}: {e}")
            return
        self._identity = identity
        self._rules = rules
        self._problem = None

    def current(self):
        """
        The rules in force; raises L{RulesMissing} while the file does not exist and
        L{RulesError} while it has never been readable, so the caller drops the connection.
        """
        if self._every.due():
            self._refresh()
        if self._problem is not None:
            raise self._problem
        return self._rules


def _present(path):
    """Whether C{path} is there for the rules: a file that exists but cannot be looked at
    (a symlink loop, a directory the daemon's user may not search) is there, and drops
    connections, rather than letting everyone in as no rules file would."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


class DefaultRulesSource:
    """
    A listener's rules when none were named: C{ROOT/rules/NAME.cdb}, else
    C{ROOT/rules/NAME}, else (until one of them has existed) C{unruled}: none, everyone
    allowed, unless the listener says otherwise.  The
    choice is made again at each check (at most once per C{interval} seconds), so that a
    rules file made after start-up, or a cdb compiled from the text file, takes effect as
    an edit would.  The chosen file is a L{RulesSource}.
    """

    def __init__(self, candidates, clock=None, interval=1.0, unruled=None):
        """
        @param unruled: the rules while no candidate has existed: C{None}, everyone
            allowed (tcpserver without -x); QMQP, which relays for whoever it lets in,
            passes rules refusing everyone.
        """
        self.candidates = list(candidates)
        self.unruled = unruled
        self._every = _CheckEvery(clock, interval)
        self._source = None
        self._choose(strict=True)
        self._every.mark()

    @property
    def path(self):
        """The file in force, or C{None}."""
        return self._source.path if self._source is not None else None

    def _choose(self, strict=False):
        """
        Follow the candidate that exists.  Once a file has been in force, its going away
        (C{rm} before writing a new one) does not let everyone in: the last file chosen
        stays, and, missing, drops connections until a candidate is back.
        """
        path = next((p for p in self.candidates if _present(p)), None)
        if path is not None and (self._source is None or self._source.path != path):
            self._source = RulesSource(path, self._every.clock, self._every.interval,
                                       strict=strict)

    def current(self):
        """
        The rules in force, or L{unruled} when no candidate exists; raises L{RulesError}
        as L{RulesSource.current} does for the file chosen.
        """
        if self._every.due():
            self._choose()
        if self._source is None:
            return self.unruled
        return self._source.current()
