"""
C{qmailtx tcprules rules.cdb rules.tmp < rules}: compile tcprules text into a rules cdb.

The same command line, messages and exit codes as ucspi-tcp 0.88's C{tcprules}
(spec/rules.md §2, spec/tools.md §6): usage and syntax errors exit 100, I/O errors 111, and
the old cdb is replaced only by an atomic rename of a complete new one.  Writes only the
two files it is given.
"""

import sys

from qmailtx.cdbfile import buildCdb
from qmailtx.rules import RulesError, djbErrorText, parseLine

USAGE = b"tcprules: usage: tcprules rules.cdb rules.tmp\n"
FATAL = b"tcprules: fatal: "


class _InputError(Exception):
    """Reading standard input failed (told apart from errors writing the cdb)."""

    def __init__(self, error):
        self.error = error


def _pairs(stdin):
    """Every C{(key, value)} of the rules on C{stdin}, read a line at a time."""
    while True:
        try:
            line = stdin.readline()
        except OSError as e:
            raise _InputError(e)
        if not line:
            return
        yield from parseLine(line[:-1] if line.endswith(b"\n") else line)


def _fsname(path):
    return path.encode("utf-8", "surrogateescape")


def main(argv, stdin=None, stderr=None):
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stderr = stderr if stderr is not None else sys.stderr.buffer
    if len(argv) < 3:
        stderr.write(USAGE)
        stderr.flush()
        return 100
    cdbPath, tmpPath = argv[1], argv[2]
    try:
        buildCdb(cdbPath, tmpPath, _pairs(stdin))
    except RulesError as e:
        # tcprules prints the line as a C string: it ends at the first NUL.
        shown = e.line.split(b"\0", 1)[0]
        stderr.write(FATAL + b"unable to parse this line: " + shown + b"\n")
        stderr.flush()
        return 100
    except _InputError as e:
        message = b"unable to read input: " + djbErrorText(e.error).encode()
        stderr.write(FATAL + message + b"\n")
        stderr.flush()
        return 111
    except OSError as e:
        reason = djbErrorText(e).encode()
        if e.filename2 is not None:
            message = (
                b"unable to move " + _fsname(tmpPath) + b" to " + _fsname(cdbPath) + b": "
            )
        elif e.filename == tmpPath:
            message = b"unable to create " + _fsname(tmpPath) + b": "
        else:
            message = b"unable to write to " + _fsname(tmpPath) + b": "
        stderr.write(FATAL + message + reason + b"\n")
        stderr.flush()
        return 111
    return 0
