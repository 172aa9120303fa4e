"""
C{qmailtx ctl [--root DIR] stat|queue|doqueue|reload|pause|cont|cdb}: qmailctl's everyday
verbs against a running C{twistd qmail} (spec/tools.md §9).

The daemon is found by C{ROOT/run/qmailtx.pid} and confirmed on its control socket
C{ROOT/run/ctl}; C{doqueue} and C{reload} send it SIGALRM and SIGHUP as qmailctl does to
qmail-send, C{pause}/C{cont} go through the socket (one process: SIGSTOP would stop the
listeners too).  C{cdb} compiles every
C{ROOT/rules/NAME} text file to C{NAME.cdb} and C{control/morercpthosts} to
C{morercpthosts.cdb} (qmail-newmrh).  Writes only those cdb files.
"""

import os
import signal
import socket
import sys

from qmailtx.cdbfile import buildCdb
from qmailtx.control import parseList
from qmailtx.rules import RulesError, compileRules
from qmailtx.sendctl import PID_FILE, SOCKET, runPath

VERBS = ("stat", "queue", "doqueue", "alrm", "flush", "reload", "hup", "pause", "cont", "cdb")
USAGE = "ctl: usage: qmailtx ctl [--root DIR] " + "|".join(VERBS) + "\n"
SOCKET_TIMEOUT = 10
REPLY_LIMIT = 4096


class NoAccess(Exception):
    """The caller may not look at the daemon's run/: whether it runs is unknown."""


def daemonPid(root):
    """
    The running daemon's pid, or C{None}.  The pid file alone is not trusted: one left by
    a daemon that died (SIGKILL, the OOM killer) may name a process that reused the
    number, and C{doqueue} would kill it with SIGALRM.  The daemon must also say that
    pid on its control socket, which only the root's owner can reach.
    """
    path = runPath(root, PID_FILE)
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except PermissionError:
        # Not knowing is not 'down': say why (run/ is the daemon owner's alone).
        raise NoAccess(f"unable to read {path}: access denied")
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # a process of another user: the control socket says whether it is ours
    except OSError:
        return None
    if ask(root, "pid") != f"pid {pid}":
        return None
    return pid


def ask(root, word):
    """One command over the control socket; the reply line, or C{None}."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SOCKET_TIMEOUT)
            s.connect(runPath(root, SOCKET))
            s.sendall(word.encode() + b"\n")
            reply = b""
            while len(reply) < REPLY_LIMIT:
                chunk = s.recv(REPLY_LIMIT)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    return reply.decode("utf-8", "replace").strip()


def rebuildCdbs(root, out):
    """qmailctl cdb: rules text files and morercpthosts; returns the exit code."""
    code = 0
    rules = os.path.join(root, "rules")
    names = sorted(os.listdir(rules)) if os.path.isdir(rules) else []
    for name in names:
        source = os.path.join(rules, name)
        if "." in name or not os.path.isfile(source):
            continue
        try:
            with open(source, "rb") as f:
                pairs = compileRules(f.read())
            buildCdb(source + ".cdb", source + ".tmp", pairs)
        except (OSError, RulesError) as e:
            out.write(f"ctl: unable to build {source}.cdb: {e}\n")
            code = 111
            continue
        out.write(f"Reloaded {source}.cdb\n")
    control = os.path.join(root, "control")
    more = os.path.join(control, "morercpthosts")
    if os.path.exists(more):
        try:
            with open(more, "rb") as f:
                hosts = parseList(f.read())
            buildCdb(more + ".cdb", more + ".tmp", ((h.lower(), b"") for h in hosts))
        except OSError as e:
            out.write(f"ctl: unable to build {more}.cdb: {e}\n")
            return 111
        out.write(f"Reloaded {more}.cdb\n")
    return code


def _inspect(tool, root):
    from importlib import import_module

    return import_module("qmailtx.scripts." + tool).main([tool, "--root", root])


def main(argv):
    args = list(argv[1:])
    root = os.environ.get("QMAILHOME") or "./qmail-root"
    if args and args[0] == "--root" and len(args) > 1:
        root = args[1]
        args = args[2:]
    elif args and args[0].startswith("--root="):
        root = args.pop(0)[len("--root="):]
    if len(args) != 1:
        sys.stderr.write(USAGE)
        return 100
    verb = args[0]
    if verb not in VERBS:
        sys.stderr.write(USAGE)
        return 100
    out = sys.stdout
    if verb == "cdb":
        return rebuildCdbs(root, out)
    if verb == "queue":
        code = _inspect("qstat", root)
        out.flush()
        return code or _inspect("qread", root)
    try:
        pid = daemonPid(root)
    except NoAccess as e:
        sys.stderr.write(f"ctl: fatal: {e}\n")
        return 111
    if verb == "stat":
        if pid is None:
            out.write(f"qmailtx: down (no daemon for {root})\n")
        else:
            reply = ask(root, "stat") or "no answer on the control socket"
            out.write(f"qmailtx: up (pid {pid}) {reply}\n")
        out.flush()
        code = _inspect("qstat", root)
        return code if pid is not None else (code or 1)
    if pid is None:
        sys.stderr.write(f"ctl: fatal: no running daemon for {root}\n")
        return 111
    if verb in ("doqueue", "alrm", "flush", "reload", "hup"):
        sig = signal.SIGHUP if verb in ("reload", "hup") else signal.SIGALRM
        os.kill(pid, sig)
        name = "HUP" if sig == signal.SIGHUP else "ALRM"
        out.write(f"Sending {name} signal to qmailtx (pid {pid}).\n")
        return 0
    if verb in ("pause", "cont"):
        reply = ask(root, verb)
        if reply is None:
            sys.stderr.write("ctl: fatal: unable to reach the control socket\n")
            return 111
        out.write(reply + "\n")
        return 0 if reply.startswith("ok") else 111
    sys.stderr.write(USAGE)
    return 100
