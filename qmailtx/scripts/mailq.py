"""
C{qmailtx mailq [--root DIR] [sendmail flags ...]}: qmail's sendmail invoked by the name
C{mailq} (spec/tools.md §2), the tool install-compat's C{mailq} wrapper runs.

sendmail's options are parsed as for any sendmail run (so an unknown flag is its usage,
100; C{-bs} still speaks SMTP), then qmail-qread lists the queue; arguments are ignored.
Writes nothing.
"""

from qmailtx.scripts import sendmail


def main(argv):
    return sendmail.main(["mailq"] + list(argv[1:]))
