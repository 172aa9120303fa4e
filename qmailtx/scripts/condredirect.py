"""
C{qmailtx condredirect [--root DIR] newaddress program [arg ...]}: qmail's condredirect
(spec/local.md §10): run the program on the message; if it exits 0, queue C{$DTLINE} plus
the message for newaddress with C{$SENDER} as envelope sender, print
C{condredirect: qp N} and exit 99 (so later .qmail lines are skipped); program exit 111
defers (111); any other exit lets delivery go on (0).  stdin must be seekable, as
qmail-local's is.  Writes nothing itself.
"""

import os

from qmailtx.dotqmail import errorStr
from qmailtx.scripts.bouncesaying import die, filterOutcome, runFilterProgram
from qmailtx.scripts.forward import injectWithDtline
from qmailtx.scripts.inject import takeRoot

USAGE = "condredirect: usage: condredirect newaddress program [ arg ... ]"


def main(argv):
    environ = dict(os.environb)
    args = list(argv[1:])
    root = takeRoot(args, environ)
    if len(args) < 2:
        return die(100, USAGE)
    code = filterOutcome("condredirect", runFilterProgram(args[1:]))
    if code is not None:
        return code
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError as e:
        return die(111, "condredirect: fatal: unable to rewind: ", errorStr(e.errno))
    sender = environ.get(b"SENDER")
    if sender is None:
        return die(100, "condredirect: fatal: SENDER not set")
    qp, code = injectWithDtline("condredirect", root, environ, sender,
                                [os.fsencode(args[0])])
    if code is not None:
        return code
    return die(99, "condredirect: qp %d" % qp)
