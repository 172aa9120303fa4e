"""
C{qmailtx maildirmake DIR}: qmail's maildirmake (spec/local.md §10): DIR, DIR/tmp, DIR/new,
DIR/cur, each mode 0700; any of them existing is fatal (111), no argument is usage (100).
"""

import os
import sys

from qmailtx.maildir import SUBDIRS


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("maildirmake: usage: maildirmake name\n")
        return 100
    path = argv[1]
    for target, shown in [(path, path)] + [(os.path.join(path, s.decode()), s.decode())
                                           for s in SUBDIRS]:
        try:
            os.mkdir(target, 0o700)
        except OSError as e:
            sys.stderr.write(f"maildirmake: fatal: unable to mkdir {shown}: "
                             f"{os.strerror(e.errno).lower()}\n")
            return 111
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
