"""
The arrows of DESIGN.md §1, checked from the import graph: a receiver never reaches past the
queue, send never parses SMTP or runs user code, nothing but deliver writes a mailbox, and the
pure modules stay free of Twisted's reactor.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "qmailtx"


def importsOf(module):
    """Names imported by qmailtx/<module>.py (qmailtx.x as x; others in full)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "qmailtx":
                names.update("qmailtx." + a.name for a in node.names)
            else:
                names.add(node.module)
    return {n[len("qmailtx."):] if n.startswith("qmailtx.") else n for n in names}


def existing(names):
    return [n for n in names if (PACKAGE / f"{n}.py").exists()]


RECEIVERS = existing(["smtp", "smtpfactory", "smtpsecure", "smtpdata", "smtpauth", "qmtp", "qmqp"])
DELIVERY = {"send", "sendqueue", "sendchannel", "sendctl", "sendtodo", "senddone", "sendpass",
            "sendpreprocess", "sendfinish", "lspawn", "lspawnworker", "deliver", "localrun",
            "remote", "remotecache", "resolver", "smtpclient", "smtpdialogue", "qmtpclient",
            "maildir", "maildirscan", "mbox"}
PURE = existing(["address", "netstring", "envelope", "results", "smtpdata", "bounce", "rewrite",
                 "schedule", "dotqmail", "smtpauth", "token822", "inject"])


@pytest.mark.parametrize("module", RECEIVERS)
def test_receivers_stop_at_the_queue(module):
    """SMTP/QMTP/QMQP hand off to the queue and never import delivery or mailboxes."""
    assert importsOf(module) & DELIVERY == set()


@pytest.mark.parametrize("module", existing(["send", "sendqueue", "sendchannel", "sendtodo",
                                             "senddone", "sendpass", "sendpreprocess",
                                             "sendfinish"]))
def test_send_never_parses_smtp_or_runs_user_code(module):
    """qmail-send's role talks to channels, not to sockets or .qmail programs."""
    assert importsOf(module) & {"smtp", "smtpsecure", "smtpclient", "smtpdialogue", "qmtpclient",
                                "deliver", "localrun", "maildir", "maildirscan", "mbox", "pop3",
                                "pop3d"} == set()


@pytest.mark.parametrize("module", existing(["queue", "queuewriter", "queuefiles", "queuelayout",
                                             "qqprogram", "envelope"]))
def test_queue_knows_no_delivery(module):
    """The queue is written by injectors and read by send; it imports neither side."""
    assert importsOf(module) & (DELIVERY | {"smtp", "qmtp", "qmqp", "pop3", "pop3d"}) == set()


def test_only_the_queue_writes_its_files():
    """The Queue is the only writer of pid/ mess/ intd/ todo/: nothing but it creates writers."""
    users = {p.stem for p in PACKAGE.glob("*.py") if "queuewriter" in importsOf(p.stem)}
    assert users == {"queue"}, users


@pytest.mark.parametrize("module", existing(["deliver", "localrun", "mbox"]))
def test_delivery_stays_off_the_queue_dirs_and_network(module):
    """qmail-local's role touches mailboxes; the queue only through the queue program."""
    assert importsOf(module) & {"queue", "queuewriter", "send", "sendqueue", "sendpreprocess",
                                "sendfinish", "remote", "smtpclient", "smtpdialogue"} == set()


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_have_no_reactor(module):
    """Parsers and policy are pure: no reactor, no protocols."""
    imported = importsOf(module)
    assert not any(n.startswith("twisted.internet") for n in imported), imported


@pytest.mark.parametrize("writer", ["maildir", "maildirscan", "mbox"])
def test_only_delivery_and_pop3_touch_mailbox_writers(writer):
    """Nothing but local delivery (and POP3, which reads and expunges) imports a mailbox module."""
    users = {p.stem for p in PACKAGE.glob("*.py") if writer in importsOf(p.stem)}
    allowed = {"deliver", "localrun", "pop3", "pop3d", "pop3box", "popup", "maildir", "maildirscan",
               "mbox", "rootdir"}
    assert users <= allowed, users - allowed
