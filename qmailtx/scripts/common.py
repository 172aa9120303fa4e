"""
What several tools share: finding the qmail root from the command line and environment,
djb's getopt, and the daemon's workers' stance on signals sent to its whole process group.

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


class GetoptError(Exception):
    """sgetopt's complaint, already worded: C{illegal option -- x}."""


def getopt(args, spec, swallow=""):
    """
    djb's getopt (subgetopt.c): options end at the first word not starting with C{-}, at
    C{-} alone (kept) or at any word starting with C{--} (dropped, so C{--x cmd} runs cmd);
    letters may be bundled and an option's argument may be attached.  A letter in
    C{swallow} takes the rest of its word as an ignored argument.

    @return: C{(options, rest)} with options as C{(letter, argument or None)}.
    @raise GetoptError: an unknown letter or a missing argument.
    """
    options, i = [], 0
    while i < len(args):
        word = args[i]
        if not word.startswith("-") or word == "-":
            break
        i += 1
        if word.startswith("--"):
            break
        pos = 1
        while pos < len(word):
            letter = word[pos]
            pos += 1
            at = spec.find(letter)
            if letter == ":" or at < 0:
                raise GetoptError("illegal option -- " + letter)
            if letter in swallow:
                options.append((letter, word[pos:]))
                break
            if spec[at + 1:at + 2] != ":":
                options.append((letter, None))
                continue
            if pos < len(word):
                options.append((letter, word[pos:]))
            elif i < len(args):
                options.append((letter, args[i]))
                i += 1
            else:
                raise GetoptError("option requires an argument -- " + letter)
            break
    return options, args[i:]
