"""C{qmailtx init ROOT [--me HOSTNAME]}: create a complete qmail root."""

import sys

from qmailtx.rootdir import HOST_NAME_RULE, RootExists, createRoot, isHostName

USAGE = "init: usage: qmailtx init ROOT [--me HOSTNAME]\n"


def main(argv):
    args = list(argv[1:])
    me = None
    root = None
    while args:
        arg = args.pop(0)
        if arg == "--me" and args:
            me = args.pop(0)
        elif arg.startswith("--me="):
            me = arg[5:]
        elif root is None and not arg.startswith("-"):
            root = arg
        else:
            sys.stderr.write(USAGE)
            return 100
    if root is None or (me is not None and not me):
        sys.stderr.write(USAGE)
        return 100
    if me is not None and not isHostName(me):
        sys.stderr.write(f"init: fatal: {me.encode('ascii', 'backslashreplace').decode()!r} "
                         f"is not a host name ({HOST_NAME_RULE})\n")
        return 100
    try:
        createRoot(root, me)
    except RootExists as e:
        sys.stderr.write(f"init: fatal: {e}\n")
        return 100
    except OSError as e:
        sys.stderr.write(f"init: fatal: unable to create {root}: {e.strerror}\n")
        return 111
    sys.stdout.write(f"init: created qmail root {root}\n")
    return 0
