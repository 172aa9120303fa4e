"""
What several tools share: finding the qmail root from the command line and environment,
and the daemon's workers' stance on signals sent to its whole process group.

A tool's root is C{--root DIR} (or C{--root=DIR}), else C{$QMAILHOME}, else C{./qmail-root},
the daemon's embedded default.
"""

import os
import signal

DEFAULT_ROOT = "./qmail-root"


def _lookup(environ, key):
    """C{environ[key]} or C{None}; os.environ refuses bytes keys and os.environb str keys."""
    try:
        return environ.get(key)
    except TypeError:
        return None


def takeRoot(args, environ=None, leading=False):
    """
    Remove C{--root DIR}/C{--root=DIR} from the list C{args} and return the root.

    @param environ: the environment to read C{QMAILHOME} from, str- or bytes-keyed
        (default C{os.environ}).
    @param leading: only a first argument counts (tools whose later arguments are
        addresses, which may be anything).
    """
    if environ is None:
        environ = os.environ
    home = _lookup(environ, "QMAILHOME") or _lookup(environ, b"QMAILHOME")
    root = os.fsdecode(home) if home else DEFAULT_ROOT
    rest = []
    i = 0
    while i < len(args):
        arg = args[i]
        if (leading and i > 0) or not arg.startswith("--root"):
            rest.append(arg)
        elif arg == "--root" and i + 1 < len(args):
            root = args[i + 1]
            i += 1
        elif arg.startswith("--root=") and len(arg) > len("--root="):
            root = arg[len("--root="):]
        else:
            rest.append(arg)
        i += 1
    args[:] = rest
    return root


def ignoreGroupSignals():
    """
    For a worker of the daemon (delivery, POP3 mailbox): a SIGINT, SIGTERM or SIGHUP sent to
    the daemon's whole process group (Ctrl-C, a supervisor's stop) is the daemon's to act
    on.  It lets the worker finish the request in hand and then closes its input, which
    ends it.  A handler that does nothing, not SIG_IGN, so that programs the worker starts
    get the default actions back at exec.
    """
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _groupSignal)


def _groupSignal(number, frame):
    pass
