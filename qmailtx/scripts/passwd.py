"""
C{qmailtx passwd FILE set LOGIN HOME [UID GID]} | C{del LOGIN} | C{list}: keep the password
file of the built-in checkpassword (L{qmailtx.passwd}).  C{set} reads the password from the
first line of stdin (never from argv, where C{ps} would show it).  Exit 0 ok, 100 usage or
bad input, 111 I/O trouble.
"""

import os
import sys

from qmailtx.passwd import Entry, PasswdError, PasswdFile, hashPassword

USAGE = ("passwd: usage: passwd FILE set LOGIN HOME [UID GID] (password on stdin; UID GID "
         "needed when the daemon runs as root) | passwd FILE del LOGIN | passwd FILE list\n")


def main(argv, stdin=None, stdout=None, stderr=None):
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    args = [a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in argv[1:]]
    if len(args) < 2:
        stderr.write(USAGE)
        return 100
    path, verb, rest = args[0], args[1], args[2:]
    try:
        pw = PasswdFile.load(path)
        if verb == b"set" and len(rest) in (2, 4):
            password = stdin.readline().rstrip(b"\r\n")
            if not password:
                stderr.write("passwd: fatal: empty password\n")
                return 100
            uid = gid = None
            if len(rest) == 4:
                if not (rest[2].isdigit() and rest[3].isdigit()):
                    stderr.write(USAGE)
                    return 100
                uid, gid = int(rest[2]), int(rest[3])
            pw.set(Entry(rest[0], hashPassword(password), uid, gid, rest[1]))
            if uid is None and os.getuid() == 0:
                # The checker's refusal would read exactly like a wrong password.
                stderr.write(f"passwd: warning: {rest[0].decode('utf-8', 'replace')} has no "
                             "UID GID: a daemon run as root refuses this login\n")
        elif verb == b"del" and len(rest) == 1:
            if not pw.remove(rest[0]):
                stderr.write("passwd: fatal: no such login\n")
                return 100
        elif verb == b"list" and not rest:
            for e in pw.entries():
                stdout.write(b"%s %s %s %s\n" % (e.login, str(e.uid).encode(),
                                                 str(e.gid).encode(), e.home))
            return 0
        else:
            stderr.write(USAGE)
            return 100
        pw.save(path)
    except PasswdError as e:
        stderr.write(f"passwd: fatal: {e}\n")
        return 100
    except OSError as e:
        stderr.write(f"passwd: fatal: unable to update {path.decode('utf-8', 'replace')}: {e.strerror}\n")
        return 111
    return 0
