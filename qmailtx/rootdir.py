"""
A complete, working qmail root (C{qmailtx init}, and the embedded default's first run).

Writes C{control/} (with a self-signed C{servercert.pem}, so STARTTLS works out of the box
and a real certificate replaces it without a restart), C{queue/} (through
L{qmailtx.queuelayout.createLayout}), C{users/}, C{alias/} with its Maildir and the
postmaster/root/mailer-daemon aliases, C{rules/smtp}: relaying for 127.0.0.1 only,
everything else allowed to deliver locally, and C{rules/qmqp}: 127.0.0.1 only.  Never
touches an existing root.
"""

import os
import pwd
import socket

from qmailtx.queuelayout import createLayout
from qmailtx.tls import writeSelfSigned


class RootExists(Exception):
    """The target already holds a qmail root (or anything at all)."""


SMTP_RULES = b"""\
# tcprules for the SMTP listener (spec: tcprules(1); compile with
#   qmailtx tcprules rules/smtp.cdb rules/smtp.tmp < rules/smtp   if you prefer a cdb).
# Loopback clients may relay; everyone else may only send to rcpthosts.
127.0.0.1:allow,RELAYCLIENT=""
:allow
"""

QMQP_RULES = b"""\
# tcprules for the QMQP listener.  QMQP checks no rcpthosts: whoever these rules let in
# may relay anywhere, as with qmail-qmqpd.  List your null clients; refuse everyone else.
127.0.0.1:allow
:deny
"""


def isHostName(me):
    """What control/me can hold on one line: an ASCII host name or an [address] literal."""
    return bool(me) and me.isascii() and all(c.isalnum() or c in "-._[]:" for c in me)


HOST_NAME_RULE = "letters, digits and - . _ [ ] : only"


def defaultHostname():
    name = socket.getfqdn()
    return name if name and "." in name else "localhost"


def aliasOwner():
    """
    Who owns C{alias/} when the root is made by root: the system's C{alias} user if there
    is one (qmail's convention), else C{nobody}, since deliveries never run as uid 0.
    """
    for name in ("alias", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry.pw_uid, entry.pw_gid
    return None


def blockedAncestor(path, uid, gid):
    """
    The first directory above C{path} that C{uid}/C{gid} may not pass through (no search
    permission), or C{None}: a mailbox owner must reach their home to take mail there.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    while True:
        st = os.stat(parent)
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return parent
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def _giveAliasAway(alias):
    if os.geteuid() != 0:
        return
    owner = aliasOwner()
    if owner is None:
        return
    for dirpath, dirnames, filenames in os.walk(alias):
        os.chown(dirpath, *owner)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), *owner)


def createRoot(root, me=None):
    """
    Create a qmail root at C{root} for host C{me}; raises L{RootExists} if C{root} exists
    and is not an empty directory, C{OSError} on trouble.
    """
    if os.path.exists(root):
        if not os.path.isdir(root) or os.listdir(root):
            raise RootExists(f"{root} already exists; not overwriting it")
    me = (me or defaultHostname()).encode()
    os.makedirs(root, 0o755, exist_ok=True)
    control = os.path.join(root, "control")
    os.mkdir(control, 0o755)
    hosts = [me] if me == b"localhost" else [me, b"localhost"]
    files = {
        "me": me + b"\n",
        "locals": b"".join(h + b"\n" for h in hosts),
        "rcpthosts": b"".join(h + b"\n" for h in hosts),
        "defaultdelivery": b"./Maildir/\n",
    }
    for name, data in files.items():
        with open(os.path.join(control, name), "wb") as f:
            f.write(data)
    writeSelfSigned(os.path.join(control, "servercert.pem"), me)
    createLayout(os.path.join(root, "queue"))
    os.mkdir(os.path.join(root, "users"), 0o755)
    os.mkdir(os.path.join(root, "public"), 0o755)  # the queue socket (qmailtx.queuesocket)
    alias = os.path.join(root, "alias")
    os.mkdir(alias, 0o2755)
    for sub in ("Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
        os.mkdir(os.path.join(alias, sub), 0o700)
    for name in (".qmail-postmaster", ".qmail-mailer-daemon", ".qmail-root"):
        with open(os.path.join(alias, name), "wb") as f:
            f.write(b"./Maildir/\n")
        os.chmod(os.path.join(alias, name), 0o644)
    _giveAliasAway(alias)
    rules = os.path.join(root, "rules")
    os.mkdir(rules, 0o755)
    for name, text in (("smtp", SMTP_RULES), ("qmqp", QMQP_RULES)):
        with open(os.path.join(rules, name), "wb") as f:
            f.write(text)
    return root
