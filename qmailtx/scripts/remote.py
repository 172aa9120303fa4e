"""
C{qmailtx remote [--root DIR] host sender recip...}: qmail-remote for one message on stdin.

Prints qmail-remote's reports (spec/remote.md §5): a recipient report per RCPT reached
(C{r}, C{h}, C{s} + text), then the message report (C{K}, C{Z}, C{D} + text), each ending
in a NUL, and exits 0, so it can stand in as C{$QMAILREMOTE} and drive tests.  Controls
come from the root (C{--root}, C{$QMAILHOME}, else C{./qmail-root}); the message is
copied to a temporary file first (the channel reads a file, stdin may be a pipe).
"""

import os
import shutil
import sys
import tempfile

from qmailtx.scripts.newu import takeRoot

USAGE_REPORT = b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0"
HOME_REPORT = b"ZUnable to switch to home directory. (#4.3.0)\n\0"
READ_REPORT = b"ZUnable to read message. (#4.3.0)\n\0"


def run(root, host, sender, recipients, messPath):
    """The attempt's report bytes, with the reactor run just for this delivery."""
    from twisted.internet import reactor

    from qmailtx.control import ControlDir
    from qmailtx.remote import RemoteDeliverer

    deliverer = RemoteDeliverer(ControlDir(os.path.join(root, "control")), reactor)
    out = []

    def done(attempt):
        out.extend(r + b"\0" for r in attempt.recipients if r is not None)
        out.append(attempt.message + b"\0")

    def failed(reason):
        out.append(b"Zqmail-remote crashed.\n\0")

    def start():
        d = deliverer.attempt(host, sender, recipients, messPath)
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: deliverer.stop())
        d.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    return b"".join(out)


def main(argv):
    args = list(argv[1:])
    root = takeRoot(args)
    out = sys.stdout.buffer
    if len(args) < 3:
        out.write(USAGE_REPORT)
        out.flush()
        return 0
    if not os.path.isdir(root):
        out.write(HOME_REPORT)
        out.flush()
        return 0
    host, sender, recipients = (os.fsencode(args[0]), os.fsencode(args[1]),
                                [os.fsencode(a) for a in args[2:]])
    with tempfile.NamedTemporaryFile(prefix="qmailtx-remote-") as spool:
        try:
            shutil.copyfileobj(sys.stdin.buffer, spool, 64 * 1024)
            spool.flush()
        except OSError:
            out.write(READ_REPORT)
            out.flush()
            return 0
        report = run(os.path.abspath(root), host, sender, recipients, spool.name)
    out.write(report)
    out.flush()
    return 0
