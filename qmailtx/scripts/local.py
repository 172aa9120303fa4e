"""
C{qmailtx local [-nN] user homedir local dash ext domain sender aliasempty}: qmail-local
for one message on stdin (which must be seekable), as the current user.

Prints qmail-local's report (program output, errors, the C{did} line) and exits 0, 100 or
111.  C{-n} describes what would be done and delivers nothing.  Forwards are injected
through C{$QMAILQUEUE} or C{qmailtx queue} with the root (C{--root DIR}, C{$QMAILHOME},
else C{./qmail-root}) as working directory.
"""

import os
import sys

from qmailtx.deliver import USAGE, LocalDeliverer, LocalDelivery
from qmailtx.scripts.deliverworker import defaultQueueCommand
from qmailtx.scripts.newu import takeRoot


def main(argv):
    args = list(argv[1:])
    root = takeRoot(args)
    doit = True
    while args and args[0].startswith("-") and len(args[0]) > 1:
        arg = args.pop(0)
        if arg == "--":
            break
        for flag in arg[1:]:
            if flag == "n":
                doit = False
            elif flag == "N":
                doit = True
            else:
                sys.stderr.buffer.write(USAGE)
                return 100
    if len(args) != 8 or not args[1].startswith("/"):
        sys.stderr.buffer.write(USAGE)
        return 100
    os.umask(0o077)
    d = LocalDelivery(*[os.fsencode(a) for a in args])
    deliverer = LocalDeliverer(os.path.abspath(root), os.environb, defaultQueueCommand())
    message = os.fdopen(os.dup(0), "rb")
    try:
        outcome = deliverer.deliver(d, message, doit)
    finally:
        message.close()
    sys.stdout.buffer.write(outcome.output)
    sys.stdout.flush()
    return outcome.exitCode
