"""
C{qmailtx newu [--root DIR]}: qmail-newu, C{users/assign} to C{users/cdb} (spec/local.md §2).

Writes C{users/cdb.tmp}, fsyncs it and renames it over C{users/cdb}; on a format error the
old cdb is untouched.  The root is C{--root DIR}, else C{$QMAILHOME}, else C{./qmail-root}.
"""

import os
import sys

from qmailtx.cdbfile import buildCdb
from qmailtx.scripts.common import takeRoot
from qmailtx.users import AssignFormatError, assignRecords



def _fatal(text):
    sys.stderr.write("qmail-newu: fatal: " + text + "\n")
    sys.stderr.flush()
    return 111


def main(argv):
    root = takeRoot(list(argv[1:]))
    old = os.umask(0o033)
    try:
        try:
            os.chdir(root)
        except OSError:
            return _fatal("unable to chdir")
        try:
            with open("users/assign", "rb") as f:
                data = f.read()
        except OSError:
            return _fatal("unable to open users/assign")
        try:
            records = assignRecords(data)
        except AssignFormatError:
            return _fatal("bad format in users/assign")
        try:
            buildCdb("users/cdb", "users/cdb.tmp", records)
        except OSError as e:
            if e.filename2 is not None:
                return _fatal("unable to move users/cdb.tmp to users/cdb")
            if e.filename is not None:
                return _fatal("unable to open users/cdb.tmp")
            return _fatal("unable to write users/cdb.tmp")
        return 0
    finally:
        os.umask(old)
