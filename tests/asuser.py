"""Running a tool's main() as another uid in a forked child, for tests run as root."""

import os
import sys


def mainAs(uid, main, argv):
    """
    Fork, drop to C{uid} (the venv's python may not be executable by it, so no exec), run
    C{main(argv)} with fds 1 and 2 on pipes (not pytest's capture); returns
    C{(exit code, stdout bytes, stderr bytes)}.
    """
    out, err = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out[1], 1)
            os.dup2(err[1], 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        except BaseException:
            os._exit(200)
    os.close(out[1])
    os.close(err[1])
    texts = []
    for fd in (out[0], err[0]):
        with os.fdopen(fd, "rb") as f:
            texts.append(f.read())
    return (os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), *texts)
