"""
C{qmailtx qread [--root DIR]}: qmail-qread (spec/queue.md §11).  Reads C{queue/} only.

One stats line per message in the directory order of C{info/0..22}, then its local and
remote recipients; bytes outside 32–126 shown as C{_}.
"""

import errno
import os
import sys
import time

from qmailtx.envelope import parseRecords
from qmailtx.queuelayout import SPLIT, splitName
from qmailtx.scripts.qstat import toolRoot

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()

# qmail's error_str wording for the errors a reader meets.
_ERRORS = {
    errno.ENOENT: "file does not exist",
    errno.EACCES: "access denied",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
}


def errorText(e):
    return _ERRORS.get(e.errno, e.strerror or "unknown error")


def enterable(path):
    """
    Raise C{OSError} with the errno C{chdir(path)} would fail with (qmail-qread chdirs to
    the root, then to C{queue}), without changing this process's directory: resolving
    C{path/.} needs the same search permission and a directory.
    """
    os.stat(os.path.join(path, "."))


def printable(data):
    """qmail-qread's filter: every byte outside 32–126 becomes C{_}."""
    return bytes(b if 32 <= b <= 126 else 95 for b in data)


def statsLine(birth, msgid, size, sender, bouncing):
    t = time.gmtime(birth)
    date = "%d %s %d %02d:%02d:%02d" % (t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year,
                                       t.tm_hour, t.tm_min, t.tm_sec)
    line = b"%s GMT  #%d  %d  <%s> " % (date.encode(), msgid, size, sender)
    if bouncing:
        line += b" bouncing"
    return printable(line) + b"\n"


def describe(queue, msgid, out):
    """Write one message's lines to C{out}; raises C{OSError} for qmail's 'trouble' cases."""
    sub = splitName(msgid)
    size = os.stat(os.path.join(queue, "mess", sub, str(msgid))).st_size
    bouncing = os.path.exists(os.path.join(queue, "bounce", str(msgid)))
    with open(os.path.join(queue, "info", sub, str(msgid)), "rb") as f:
        sender = f.read().split(b"\0", 1)[0][1:]
        birth = os.fstat(f.fileno()).st_mtime
    out.write(statsLine(birth, msgid, size, sender, bouncing))
    for channel in ("local", "remote"):
        try:
            with open(os.path.join(queue, channel, sub, str(msgid)), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            out.write(b"warning: trouble with #%d: %s\n" % (msgid, errorText(e).encode()))
            continue
        for letter, address in parseRecords(data):
            if letter in (b"T", b"D"):
                done = b"  done" if letter == b"D" else b""
                out.write(b"%s\t%s\t%s\n" % (done, channel.encode(), printable(address)))


def main(argv):
    root = toolRoot(argv)
    out = sys.stdout.buffer
    queue = os.path.join(root, "queue")
    try:
        enterable(root)
        enterable(queue)
    except OSError as e:
        out.write(b"fatal: unable to chdir: %s\n" % errorText(e).encode())
        out.flush()
        return 111
    for i in range(SPLIT):
        sub = os.path.join(queue, "info", str(i))
        try:
            names = [entry.name for entry in os.scandir(sub)]
        except OSError as e:
            out.write(b"fatal: unable to opendir info/%d: %s\n" % (i, errorText(e).encode()))
            out.flush()
            return 111
        for name in names:
            if not (name.isascii() and name.isdigit()):
                continue
            msgid = int(name)
            try:
                describe(queue, msgid, out)
            except OSError as e:
                out.write(b"warning: trouble with #%d: %s\n" % (msgid, errorText(e).encode()))
    out.flush()
    return 0
