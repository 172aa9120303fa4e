"""
C{qmailtx checkpassword FILE prog [args...]}: a checkpassword (spec/pop3.md §2) over the
password file kept by C{qmailtx passwd}.

Reads C{login\\0password\\0timestamp\\0} from fd 3 (at most 512 bytes; the timestamp is
ignored, so APOP and CRAM-MD5 are not offered by this backend), verifies the salted hash,
and on success sets USER, HOME, SHELL, drops to the entry's gid/uid when run as root (an
entry without them is refused then: no mailbox is served as root), chdirs home and execs
prog.  Exit 1 bad login, 2 misuse, 111 temporary trouble.
"""

import os
import sys

from qmailtx.passwd import PasswdError, PasswdFile, verifyPassword

FD3_LIMIT = 512


def readFd3():
    data = b""
    while len(data) < FD3_LIMIT:
        chunk = os.read(3, FD3_LIMIT - len(data))
        if not chunk:
            break
        data += chunk
    os.close(3)
    return data


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("checkpassword: usage: checkpassword FILE prog [args...]\n")
        return 2
    try:
        data = readFd3()
    except OSError:
        return 2
    fields = data.split(b"\0")
    if len(fields) < 3:
        return 2
    login, password = fields[0], fields[1]
    try:
        entry = PasswdFile.load(argv[1]).find(login)
    except (OSError, PasswdError):
        return 111
    if entry is None or not verifyPassword(password, entry.hash):
        return 1
    try:
        if os.getuid() == 0:
            if entry.uid is None or entry.gid is None or entry.uid == 0:
                return 111
            os.setgroups([entry.gid])
            os.setgid(entry.gid)
            os.setuid(entry.uid)
        os.chdir(entry.home)
    except OSError:
        return 111
    env = {b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin"), b"USER": login,
           b"HOME": entry.home, b"SHELL": b"/bin/sh"}
    try:
        os.execvpe(argv[2], argv[2:], env)
    except OSError:
        return 111


if __name__ == "__main__":
    sys.exit(main(sys.argv))
