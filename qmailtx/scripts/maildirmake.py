"""
C{qmailtx maildirmake DIR}: qmail's maildirmake (spec/local.md §10): DIR, DIR/tmp, DIR/new,
DIR/cur, each mode 0700 under umask 077 (set here, as qmail does); any of them existing is
fatal (111), no argument is usage (100), arguments after DIR are ignored.
"""

import os
import sys

from qmailtx.dotqmail import errorStr
from qmailtx.maildir import SUBDIRS


def main(argv):
    os.umask(0o077)  # as qmail's maildirmake: a caller's stricter umask must not leave DIR unwritable
    if len(argv) < 2:
        sys.stderr.write("maildirmake: usage: maildirmake name\n")
        return 100
    path = os.fsencode(argv[1])
    for target in [path] + [path + b"/" + s for s in SUBDIRS]:
        try:
            os.mkdir(target, 0o700)
        except OSError as e:
            sys.stderr.buffer.write(b"maildirmake: fatal: unable to mkdir " + target + b": "
                                    + errorStr(e.errno) + b"\n")
            return 111
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
