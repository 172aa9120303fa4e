"""
C{qmailtx qstat [--root DIR]}: qmail-qstat (spec/queue.md §11).  Reads C{queue/} only.

The root is C{--root DIR}, else C{$QMAILHOME}, else C{./qmail-root} (the daemon's default).
"""

import os
import sys

from qmailtx.scripts.common import takeRoot


def toolRoot(argv):
    """
    The qmail root for an inspection tool (qstat, qread, showctl).  Arguments other than
    C{--root DIR} are ignored: qmail's tools take none and ignore what they are given, so
    C{mailq -v} and scripts passing flags still get the listing.
    """
    return takeRoot(list(argv[1:]))


def countFiles(path):
    """Non-directory entries anywhere below C{path} (qmail-qstat's find | wc, minus the dirs)."""
    total = 0
    for _, _, files in os.walk(path, onerror=_raise):
        total += len(files)
    return total


def _raise(error):
    raise error


def main(argv):
    root = toolRoot(argv)
    queue = os.path.join(root, "queue")
    try:
        mess = countFiles(os.path.join(queue, "mess"))
        todo = countFiles(os.path.join(queue, "todo"))
    except OSError as e:
        sys.stderr.write(f"{argv[0]}: fatal: unable to read {e.filename}: {e.strerror}\n")
        return 111
    sys.stdout.write(f"messages in queue: {mess}\n"
                     f"messages in queue but not yet preprocessed: {todo}\n")
    return 0
