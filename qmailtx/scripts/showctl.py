"""
C{qmailtx showctl [--root DIR]}: qmail-showctl (spec/tools.md §4, spec/control.md).

Compile-time constants, then every control file qmail knows, in qmail's order, each with
its value or C{(Default.)} and the default, then C{I have no idea what this file does.}
for anything else in C{control/}.  Reads C{control/} only, with the readers of
L{qmailtx.control}.
"""

import grp
import os
import pwd
import sys

from qmailtx.control import parseInt, parseLine, parseList
from qmailtx.queuelayout import SPLIT
from qmailtx.scripts.qstat import toolRoot

USER_EXT_DELIMITER = "-"
PATERNALISM = 2
SPAWN = 120
USERS = ("alias", "qmaild", "qmaill", "root", "qmailp", "qmailq", "qmailr", "qmails")
GROUPS = ("nofiles", "qmail")

# (kind, file, default, before value, after value); for "line" entries the default is
# replaced by control/me when the flag is set and me exists.
INT, LINE, LINE_ME, LIST = "int", "line", "lineme", "list"
FILES = [
    (LIST, "badmailfrom", "Any MAIL FROM is allowed.", "", " not accepted in MAIL FROM."),
    (LINE, "bouncefrom", "MAILER-DAEMON", "Bounce user name is ", ""),
    (LINE_ME, "bouncehost", "bouncehost", "Bounce host name is ", ""),
    (INT, "concurrencylocal", "10", "Local concurrency is ", ""),
    (INT, "concurrencyremote", "20", "Remote concurrency is ", ""),
    (INT, "databytes", "0", "SMTP DATA limit is ", " bytes"),
    (LINE_ME, "defaultdomain", "defaultdomain", "Default domain name is ", ""),
    (LINE_ME, "defaulthost", "defaulthost", "Default host name is ", ""),
    (LINE_ME, "doublebouncehost", "doublebouncehost", "2B recipient host: ", ""),
    (LINE, "doublebounceto", "postmaster", "2B recipient user: ", ""),
    (LINE_ME, "envnoathost", "envnoathost", "Presumed domain name is ", ""),
    (LINE_ME, "helohost", "helohost", "SMTP client HELO host name is ", ""),
    (LINE_ME, "idhost", "idhost", "Message-ID host name is ", ""),
    (LINE_ME, "localiphost", "localiphost", "Local IP address becomes ", ""),
    (LIST, "locals", "Messages for me are delivered locally.", "Messages for ",
     " are delivered locally."),
    (LINE, "me", "undefined! Uh-oh", "My name is ", ""),
    (LIST, "percenthack", "The percent hack is not allowed.",
     "The percent hack is allowed for user%host@", "."),
    (LINE_ME, "plusdomain", "plusdomain", "Plus domain name is ", ""),
    (LIST, "qmqpservers", "No QMQP servers.", "QMQP server: ", "."),
    (INT, "queuelifetime", "604800", "Message lifetime in the queue is ", " seconds"),
    (LIST, "rcpthosts", "SMTP clients may send messages to any recipient.",
     "SMTP clients may send messages to recipients at ", "."),
    "morercpthosts",
    "morercpthosts.cdb",
    (LINE_ME, "smtpgreeting", "smtpgreeting", "SMTP greeting: 220 ", ""),
    (LIST, "smtproutes", "No artificial SMTP routes.", "SMTP route: ", ""),
    (INT, "timeoutconnect", "60", "SMTP client connection timeout is ", " seconds"),
    (INT, "timeoutremote", "1200", "SMTP client data timeout is ", " seconds"),
    (INT, "timeoutsmtpd", "1200", "SMTP server data timeout is ", " seconds"),
    (LIST, "virtualdomains", "No virtual domains.", "Virtual domain: ", ""),
]
KNOWN = {entry if isinstance(entry, str) else entry[1] for entry in FILES}

MORERCPTHOSTS_WITH = (LIST, "morercpthosts", "No effect.",
                      "SMTP clients may send messages to recipients at ", ".")
MORERCPTHOSTS_WITHOUT = (LIST, "morercpthosts", "No rcpthosts; morercpthosts is irrelevant.",
                         "No rcpthosts; doesn't matter that morercpthosts has ", ".")


def safe(data):
    """qmail-showctl's filter: bytes outside 32–126 become C{?}."""
    return bytes(b if 32 <= b <= 126 else 63 for b in data)


def readRaw(control, name):
    """File bytes, C{None} if absent; raises C{OSError} for other trouble."""
    try:
        with open(os.path.join(control, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def show(control, entry, me):
    """
    One file's paragraph (bytes) and qmail's do_lst result as a truth: false only for a
    missing file (0); a read error (-1) counts as true, so an unreadable rcpthosts gives
    morercpthosts the "recipients at" wording, as in qmail-showctl.
    """
    kind, name, default, pre, post = entry
    head = b"\n" + name.encode() + b": "
    try:
        data = readRaw(control, name)
    except OSError:
        return head + b"Oops! Trouble reading this file.\n", True
    pre, post = pre.encode(), post.encode()
    if kind == LIST:
        if data is None:
            return head + b"(Default.) " + default.encode() + b"\n", False
        lines = [pre + safe(x) + post + b"\n" for x in parseList(data)]
        return head + b"\n" + b"".join(lines), True
    if kind == INT:
        value = None if data is None else parseInt(data)
        if value is None:
            return head + b"(Default.) " + pre + default.encode() + post + b".\n", False
        return head + pre + b"%d" % value + post + b".\n", True
    if data is None:
        value = me if kind == LINE_ME and me is not None else default.encode()
        return head + b"(Default.) " + pre + safe(value) + b".\n", False
    return head + pre + safe(parseLine(data)) + b".\n", True


def cdbStaleness(control):
    def mtime(name):
        try:
            return os.stat(os.path.join(control, name)).st_mtime
        except OSError:
            return None

    text, cdb = mtime("morercpthosts"), mtime("morercpthosts.cdb")
    if text is None:
        if cdb is None:
            line = "(Default.) No effect."
        else:
            line = "Oops! morercpthosts.cdb exists but morercpthosts doesn't."
    elif cdb is None:
        line = "Oops! morercpthosts exists but morercpthosts.cdb doesn't."
    elif text > cdb:
        line = "Oops! morercpthosts.cdb is older than morercpthosts."
    else:
        line = "Modified recently enough; hopefully up to date."
    return b"\nmorercpthosts.cdb: " + line.encode() + b"\n"


def accountIds(names, lookup, fallback):
    """qmail's account ids; an account that does not exist is qmailtx's single queue owner."""
    ids = []
    for name in names:
        try:
            ids.append(lookup(name))
        except KeyError:
            ids.append(fallback)
    return ", ".join(str(i) for i in ids)


def header(root):
    try:
        st = os.stat(os.path.join(root, "queue"))
        uid, gid = st.st_uid, st.st_gid
    except OSError:
        uid, gid = os.getuid(), os.getgid()
    users = accountIds(USERS, lambda n: pwd.getpwnam(n).pw_uid, uid)
    groups = accountIds(GROUPS, lambda n: grp.getgrnam(n).gr_gid, gid)
    return (f"qmail home directory: {os.path.abspath(root)}.\n"
            f"user-ext delimiter: {USER_EXT_DELIMITER}.\n"
            f"paternalism (in decimal): {PATERNALISM}.\n"
            f"silent concurrency limit: {SPAWN}.\n"
            f"subdirectory split: {SPLIT}.\n"
            f"user ids: {users}.\n"
            f"group ids: {groups}.\n").encode()


def report(root):
    """Everything qmail-showctl prints, and its exit code."""
    out = [header(root)]
    control = os.path.join(root, "control")
    try:
        names = os.listdir(control)
    except OSError:
        return b"".join(out) + b"Oops! Unable to chdir to control.\n", 111
    try:
        data = readRaw(control, "me")
    except OSError:
        return b"".join(out) + b"Oops! Trouble reading control/me.", 111
    me = None if data is None else parseLine(data)
    hasRcpthosts = False
    for entry in FILES:
        if entry == "morercpthosts":
            text, _ = show(control, MORERCPTHOSTS_WITH if hasRcpthosts else MORERCPTHOSTS_WITHOUT, me)
        elif entry == "morercpthosts.cdb":
            text = cdbStaleness(control)
        else:
            text, present = show(control, entry, me)
            if entry[1] == "rcpthosts":
                hasRcpthosts = present
        out.append(text)
    for name in names:
        if name not in KNOWN:
            out.append(b"\n" + os.fsencode(name) + b": I have no idea what this file does.\n")
    return b"".join(out), 0


def main(argv):
    root = toolRoot(argv)
    text, code = report(root)
    sys.stdout.buffer.write(text)
    sys.stdout.buffer.flush()
    return code

