"""
C{qmailtx pop3session}: qmail-pop3d's mailbox work as the mailbox owner (spec/pop3.md §2).

When the daemon runs as root it starts this program with C{--uid U --gid G} (one per
(uid, gid), reused); the program becomes that uid and gid itself (L{becomeOwner}) and the
daemon keeps the socket and TLS.  Requests arrive on stdin, replies
leave on stdout, both as netstring frames; one reply per request, in order:

  - C{L path version} ⇒ C{=} if the listing still has that version, else
    C{+version\\0} and the listing (C{name\\0size\\0}…); or C{-nomaildir}, C{-scan}
  - C{O path name n} ⇒ C{+handle\\0} and the first n bytes (handle empty when that was
    all: the file is closed already), or C{-error}
  - C{R handle n} ⇒ C{+bytes} (empty at end of file) or C{-error}
  - C{C handle} ⇒ C{+}
  - C{U path deleted kept} (names C{\\0}-separated) ⇒ C{+failures}

Refuses to run as uid 0.  The one place POP3 changes uid.  Writes only through
L{qmailtx.maildirscan}; must not import Twisted.
"""

import os
import sys

from qmailtx import maildirscan
from qmailtx.safeio import writeAll
from qmailtx.scripts.common import ignoreGroupSignals

FRAME_LIMIT = 64 * 1024 * 1024
"""Largest frame accepted either way (a 50,000-message listing is about 3 MB)."""

READ_LIMIT = 1024 * 1024
"""Largest chunk one C{R} request returns."""

OPEN_LIMIT = 256
"""Message files a worker keeps open at once; the oldest is closed beyond this."""


def netstring(data):
    return b"%d:%s," % (len(data), data)


def encodeFrame(fields):
    """A request: one netstring holding one netstring per field."""
    return netstring(b"".join(netstring(f) for f in fields))


def parseNetstrings(data):
    """Every netstring of C{data}, which must hold nothing else."""
    out = []
    pos = 0
    while pos < len(data):
        colon = data.index(b":", pos)
        size = int(data[pos:colon])
        end = colon + 1 + size
        if data[end:end + 1] != b",":
            raise ValueError("bad netstring")
        out.append(data[colon + 1:end])
        pos = end + 1
    return out


class FrameDecoder:
    """
    Incremental netstring frames, each at most L{FRAME_LIMIT} bytes.  A large frame's chunks
    are kept in a list and joined once when it is complete: appending each pipe read to one
    buffer copied a 3 MB listing hundreds of times.
    """

    def __init__(self):
        self.chunks = []
        self.size = 0
        self.start = None
        self.end = None

    def feed(self, data):
        if data:
            self.chunks.append(data)
            self.size += len(data)
        frames = []
        while self.chunks:
            if self.end is None:
                buffer = self._joined()
                colon = buffer.find(b":", 0, 13)
                if colon < 0:
                    if len(buffer) > 12:
                        raise ValueError("bad frame")
                    return frames
                head = buffer[:colon]
                if not head.isdigit() or int(head) > FRAME_LIMIT:
                    raise ValueError("bad frame")
                self.start = colon + 1
                self.end = self.start + int(head)
            if self.size <= self.end:
                return frames
            buffer = self._joined()
            if buffer[self.end:self.end + 1] != b",":
                raise ValueError("bad frame")
            frames.append(buffer[self.start:self.end])
            rest = buffer[self.end + 1:]
            self.chunks = [rest] if rest else []
            self.size = len(rest)
            self.start = self.end = None
        return frames

    def _joined(self):
        if len(self.chunks) > 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]


def encodeListing(messages):
    """C{name\\0size\\0} for each message, built without a Python step per message."""
    if not messages:
        return b""
    fields = [b""] * (2 * len(messages) + 1)
    fields[0:-1:2] = [name for name, _ in messages]
    fields[1:-1:2] = map(b"%d".__mod__, [size for _, size in messages])
    return b"\0".join(fields)


def decodeListing(data):
    fields = data.split(b"\0")
    return list(zip(fields[0:-1:2], map(int, fields[1:-1:2])))


def splitNames(data):
    return [n for n in data.split(b"\0") if n] if data else []


class Session:
    """The worker's state: a scan cache, and the open message files by handle."""

    def __init__(self):
        self.cache = maildirscan.ScanCache()
        self.files = {}
        self.nextHandle = 0

    def box(self, path):
        return maildirscan.Maildir(path, self.cache)

    def handle(self, fields):
        verb = fields[0]
        if verb == b"L":
            try:
                listing = self.box(fields[1]).login()
            except maildirscan.NoMaildir:
                return b"-nomaildir"
            except (maildirscan.ScanError, OSError):
                return b"-scan"
            if len(fields) > 2 and fields[2] == listing.version:
                return b"=" + listing.version
            encoded = listing.replies.get(b"wire")
            if encoded is None:
                encoded = listing.replies[b"wire"] = encodeListing(listing)
            return b"+" + listing.version + b"\0" + encoded
        if verb == b"O":
            n = min(int(fields[3]), READ_LIMIT)
            try:
                f = self.box(fields[1]).open(fields[2])
                first = f.read(n)
            except OSError as e:
                return b"-" + str(e).encode("utf-8", "replace")
            if len(first) < n:
                f.close()
                return b"+\0" + first
            self.nextHandle += 1
            self.files[b"%d" % self.nextHandle] = f
            if len(self.files) > OPEN_LIMIT:
                self.files.pop(next(iter(self.files))).close()
            return b"+%d\0" % self.nextHandle + first
        if verb == b"R":
            f = self.files.get(fields[1])
            if f is None:
                return b"-no such handle"
            try:
                return b"+" + f.read(min(int(fields[2]), READ_LIMIT))
            except OSError as e:
                return b"-" + str(e).encode("utf-8", "replace")
        if verb == b"C":
            f = self.files.pop(fields[1], None)
            if f is not None:
                f.close()
            return b"+"
        if verb == b"U":
            failed = self.box(fields[1]).update(splitNames(fields[2]), splitNames(fields[3]))
            return b"+%d" % failed
        return b"-unknown request"


def serve(inFd=0, outFd=1):
    session = Session()
    decoder = FrameDecoder()
    while True:
        data = os.read(inFd, 65536)
        if not data:
            return 0
        for frame in decoder.feed(data):
            writeAll(outFd, netstring(session.handle(parseNetstrings(frame))))


def becomeOwner(uid, gid):
    """
    Become C{uid}/C{gid} with C{gid} as the only group.  Needs no passwd entry, as
    qmail-pop3d (run by checkpassword) needs none: Twisted's spawnProcess(uid=...) calls
    initgroups with the passwd name of the uid, and failed for an owner without one.
    """
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)


def takeOwner(args):
    """C{(uid, gid)} from C{--uid U --gid G} at the start of C{args}, or C{None}."""
    if len(args) != 4 or args[0] != "--uid" or args[2] != "--gid":
        return None
    if not (args[1].isdigit() and args[3].isdigit()):
        raise ValueError("--uid and --gid take numbers")
    return int(args[1]), int(args[3])


def main(argv):
    try:
        owner = takeOwner(argv[1:])
    except ValueError as e:
        sys.stderr.write(f"pop3session: {e}\n")
        return 111
    if owner is not None and owner != (os.getuid(), os.getgid()):
        try:
            becomeOwner(*owner)
        except OSError as e:
            # One line the daemon's log keeps whole (a traceback's cause came last, cut off).
            sys.stderr.write(f"pop3session: unable to become uid {owner[0]} gid {owner[1]}: "
                             f"{e.strerror or e}\n")
            return 111
    if os.getuid() == 0:
        sys.stderr.write("qmail-pop3d invoked as uid 0, terminating\n")
        return 1
    # Killed by a signal to the whole group in the middle of QUIT's UPDATE, a session
    # would leave part of its deletions undone while its client believes them done.
    ignoreGroupSignals()
    return serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
