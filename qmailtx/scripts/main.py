"""
The C{qmailtx} command: C{qmailtx TOOL ARGS...} runs C{qmailtx.scripts.<tool>.main(argv)}.

A tool is any module in this package with a C{main(argv) -> int}; C{argv[0]} is the tool's
qmail name, so messages read C{tcprules: fatal: ...} exactly as qmail's do.
"""

import errno
import importlib
import keyword
import os
import pkgutil
import sys

import qmailtx.scripts


def tools():
    return sorted(
        m.name.rstrip("_").replace("_", "-")
        for m in pkgutil.iter_modules(qmailtx.scripts.__path__)
        if m.name not in ("main", "common")
    )


def usage(out):
    out.write("usage: qmailtx TOOL [ARGS...]\ntools: " + " ".join(tools()) + "\n")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        usage(sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 100
    name = argv[1]
    if name not in tools():
        sys.stderr.write(f"qmailtx: fatal: unknown tool {name!r}\n")
        usage(sys.stderr)
        return 100
    module = name.replace("-", "_")
    if keyword.iskeyword(module):
        module += "_"  # a tool named like a keyword (except) lives in except_.py
    module = importlib.import_module("qmailtx.scripts." + module)
    for stream in ("stdin", "stdout"):
        if getattr(sys, stream) is None:
            setattr(sys, stream, _Closed())
    try:
        code = module.main([name] + argv[2:])
        if not isinstance(sys.stdout, _Closed):
            sys.stdout.flush()
    except OSError as e:
        # What a tool does not handle itself: a closed descriptor, a full disk under its
        # output, a write to a pipe nobody reads.  One line and a temporary failure, as
        # qmail's tools say "fatal: unable to write output".
        _quietStdout()
        if not isinstance(e, BrokenPipeError):
            # A reader that went away (| head) is no news, as SIGPIPE ends qmail's tools.
            sys.stderr.write(f"{name}: fatal: {e.strerror or e}\n")
        return 111
    return code


class _Closed:
    """
    Stands in for C{sys.stdin} or C{sys.stdout} when that descriptor was closed at start
    (Python leaves C{None}): using it fails as a read or write on a closed descriptor would.
    """

    buffer = property(lambda self: self)

    def __getattr__(self, name):
        def closed(*args, **kwargs):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return closed


def _quietStdout():
    """After a write error, drop what is buffered so the exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
