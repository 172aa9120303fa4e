"""
C{qmailtx preline [-frdFRD] cmd [arg ...]}: preline (spec/local.md §10).

Feeds C{cmd} the UFLINE, RPLINE and DTLINE from the environment (unless C{-f}, C{-r}, C{-d};
uppercase flags turn them back on), then its own stdin; exits with cmd's status.
"""

import os
import subprocess
import sys

from qmailtx.dotqmail import errorStr
from qmailtx.scripts.common import GetoptError, getopt
from qmailtx.users import isTemporaryErrno

USAGE = b"preline: usage: preline cmd [ arg ... ]\n"
FATAL = b"preline: fatal: "
FLAGS = "frdFRD"
COPY_CHUNK = 65536
"""Bytes per read while copying stdin to the command."""


def _fatal(text, code=111):
    sys.stderr.buffer.write(FATAL + text + b"\n")
    sys.stderr.flush()
    return code


def main(argv):
    env = os.environb
    lines = {b"f": env.get(b"UFLINE"), b"r": env.get(b"RPLINE"), b"d": env.get(b"DTLINE")}
    if None in lines.values():
        sys.stderr.buffer.write(USAGE)
        return 100
    wanted = {b"f": True, b"r": True, b"d": True}
    try:
        options, args = getopt(argv[1:], FLAGS)
    except GetoptError as e:
        sys.stderr.buffer.write(b"preline: " + os.fsencode(str(e)) + b"\n" + USAGE)
        return 100
    for letter, _ in options:
        wanted[letter.lower().encode()] = letter.isupper()
    if not args:
        sys.stderr.buffer.write(USAGE)
        return 100
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, restore_signals=True)
    except OSError as e:
        code = 111 if isTemporaryErrno(e.errno) else 100
        return _fatal(b"unable to run " + os.fsencode(args[0]) + b": " + errorStr(e.errno), code)
    try:
        for key in (b"f", b"r", b"d"):
            if wanted[key]:
                proc.stdin.write(lines[key])
        while True:
            chunk = os.read(0, COPY_CHUNK)
            if not chunk:
                break
            proc.stdin.write(chunk)
        proc.stdin.close()
    except OSError as e:
        proc.wait()
        return _fatal(b"unable to copy input: " + errorStr(e.errno))
    status = proc.wait()
    if status < 0:
        return _fatal(b"child crashed")
    return status
