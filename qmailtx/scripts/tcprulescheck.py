"""
C{qmailtx tcprulescheck rules.cdb}: show what tcpserver would do for the client described by
C{TCPREMOTEIP}, C{TCPREMOTEHOST} and C{TCPREMOTEINFO} in the environment.

Output, messages and exit codes as ucspi-tcp 0.88's C{tcprulescheck} (spec/tools.md §6):
C{rule KEY:} or C{default:}, a line per variable up to a C{D} record, then the decision.
Reads the cdb only; writes nothing.
"""

import os
import sys

from qmailtx.rules import Rules, RulesError, decodeRecords, djbErrorText

USAGE = b"tcprulescheck: usage: tcprulescheck rules.cdb\n"
FATAL = b"tcprulescheck: fatal: "


def report(found):
    """The lines tcprulescheck prints for a lookup result (C{(key, value)} or C{None})."""
    if found is None:
        return b"default:\nallow connection\n"
    key, value = found
    out = [b"rule " + key + b":\n"]
    for record in decodeRecords(value):
        if record[:1] == b"D":
            out.append(b"deny connection\n")
            return b"".join(out)
        if record[:1] == b"+":
            out.append(b"set environment variable " + record[1:] + b"\n")
    out.append(b"allow connection\n")
    return b"".join(out)


def main(argv, environ=None, stdout=None, stderr=None):
    environ = environ if environ is not None else os.environb
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr.buffer
    if len(argv) < 2:
        stderr.write(USAGE)
        stderr.flush()
        return 100
    path = argv[1]
    try:
        with open(path, "rb") as f:
            data = f.read()
        rules = Rules.fromCdb(data)
    except (OSError, RulesError) as e:
        if isinstance(e, OSError):
            reason = djbErrorText(e)
        else:
            reason = "invalid argument" if not data else "protocol error"
        stderr.write(
            FATAL
            + b"unable to read "
            + path.encode("utf-8", "surrogateescape")
            + b": "
            + reason.encode()
            + b"\n"
        )
        stderr.flush()
        return 111
    ip = environ.get(b"TCPREMOTEIP", b"0.0.0.0")
    found = rules.find(ip, environ.get(b"TCPREMOTEHOST"), environ.get(b"TCPREMOTEINFO"))
    stdout.write(report(found))
    stdout.flush()
    return 0
