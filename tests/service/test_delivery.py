"""
End to end through a live C{twistd qmail}: a message in by SMTP or by C{qmailtx inject} (every
case runs both ways), qmail-send, lspawn and a delivery worker running as the mailbox owner,
into maildirs and mboxes; bounces back to the sender's mailbox.

As root the daemon delivers as a throwaway user (useradd, removed afterwards), and one
test runs the whole daemon as that user (virtual mode: forwards, and an assignment to
another uid deferred).  Run unprivileged, the daemon and the mailboxes share our uid; as
root, one test makes that run too, running this module again as the throwaway user.  Both
use an interpreter that user can exec (L{tests.service.pythonpath}); the test's own may
live where only root can reach it.
"""

import inspect
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

import pytest

from qmailtx.cdbfile import buildCdb
from qmailtx.rootdir import createRoot
from qmailtx.users import assignRecords
from tests.service import pythonpath
from tests.service.daemon import REPO, Daemon, SystemDaemon

ME = "mx.example.com"
WAIT = 20.0


class MailUser:
    """A throwaway system user as root (removed at the end), else ourselves."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="qmailtx-e2e-")
        os.chmod(self.base, 0o755)
        self.name = None
        if os.geteuid() == 0:
            self.name = "qmtxe%d" % os.getpid()
            subprocess.run(["useradd", "-M", "-N", "-s", "/bin/false", "-d", "/nonexistent",
                            self.name], check=True, capture_output=True)
            entry = pwd.getpwnam(self.name)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        self.homes = 0

    def own(self, path):
        os.chown(path, self.uid, self.gid)

    def home(self):
        """A fresh home with a Maildir, owned by the user."""
        self.homes += 1
        home = os.path.join(self.base, "home%d" % self.homes)
        os.mkdir(home, 0o755)
        for sub in ("Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
            os.mkdir(os.path.join(home, sub), 0o700)
            self.own(os.path.join(home, sub))
        self.own(home)
        return home

    def file(self, path, data, mode=0o644):
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        self.own(path)

    def close(self):
        shutil.rmtree(self.base, ignore_errors=True)
        if self.name is not None:
            subprocess.run(["userdel", self.name], capture_output=True)


@pytest.fixture(scope="module")
def user():
    u = MailUser()
    yield u
    u.close()


class Setup:
    """A fresh root whose users/assign maps joe and joe-* to a home of the mail user."""

    def __init__(self, user, base, owner=None, via="smtp"):
        self.user = user
        self.via = via
        self.root = os.path.join(base, "root")
        createRoot(self.root, ME)
        os.chmod(base, 0o755)
        self.home = user.home()
        u = user
        assign = (f"=joe:joeuser:{u.uid}:{u.gid}:{self.home}:::\n"
                  f"+joe-:joeuser:{u.uid}:{u.gid}:{self.home}:-::\n"
                  f"=sender:joeuser:{u.uid}:{u.gid}:{self.home}:::\n.\n").encode()
        buildCdb(os.path.join(self.root, "users", "cdb"), os.path.join(self.root, "users", "tmp"),
                 assignRecords(assign))
        self.control("smtproutes", b":127.0.0.1:1\n")
        if owner is not None:
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, name), *owner)
            os.chown(self.root, *owner)
        self.daemon = None

    def control(self, name, data):
        with open(os.path.join(self.root, "control", name), "wb") as f:
            f.write(data)

    def dotqmail(self, name, text, mode=0o644):
        self.user.file(os.path.join(self.home, name), text, mode)

    def start(self, daemon=None):
        self.daemon = (daemon or Daemon(self.root)).start()
        return self

    def startForwarding(self):
        """Start under an interpreter the mailbox owner can exec: its forwards run C{qmailtx queue}.
        Unprivileged, the owner is ourselves and our own interpreter serves."""
        if os.geteuid() != 0:
            return self.start()
        python = pythonpath.requireUserPython(self.user.uid, self.user.gid)
        return self.start(SystemDaemon(self.root, python))

    def send(self, sender, recipients, body=b"Subject: test\r\n\r\nhello\r\n"):
        """Hand the message in the test's way: SMTP, or C{qmailtx inject -f SENDER RCPT...}."""
        if self.via == "smtp":
            with smtplib.SMTP("127.0.0.1", self.daemon.port) as s:
                s.sendmail(sender, recipients, body)
            return
        env = dict(os.environ, QMAILHOME=self.root,
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        injected = subprocess.run(
            [sys.executable, "-m", "qmailtx.scripts.main", "inject", "-f", sender, *recipients],
            input=body.replace(b"\r\n", b"\n"), env=env, capture_output=True, timeout=60)
        assert injected.returncode == 0, injected.stderr

    def waitFor(self, predicate, what):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.daemon.log()[-3000:]}")

    def mails(self, maildir=None, count=1):
        new = os.path.join(maildir or os.path.join(self.home, "Maildir"), "new")

        def ready():
            names = sorted(os.listdir(new))
            return names if len(names) >= count else None
        names = self.waitFor(ready, f"{count} message(s) in {new}")
        out = []
        for n in names:
            with open(os.path.join(new, n), "rb") as f:
                out.append(f.read())
        return out

    def logLine(self, pattern):
        return self.waitFor(lambda: re.search(pattern, self.daemon.log()), f"log /{pattern}/")

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()


@pytest.fixture(params=["smtp", "inject"])
def site(user, request):
    s = Setup(user, tempfile.mkdtemp(dir=user.base), via=request.param)
    yield s
    s.stop()


def test_maildirAsOwner(site, user):
    """A message reaches the owner's Maildir, written as that uid, with Return-Path and Delivered-To."""
    site.start()
    site.send("someone@example.org", ["joe@" + ME])
    [mail] = site.mails()
    assert mail.startswith(b"Return-Path: <someone@example.org>\nDelivered-To: joe@" + ME.encode()
                           + b"\nReceived: (qmail ")
    [name] = os.listdir(os.path.join(site.home, "Maildir", "new"))
    assert os.stat(os.path.join(site.home, "Maildir", "new", name)).st_uid == user.uid
    site.logLine(r"delivery \d+: success: did_1\+0\+0/")
    site.logLine(r"end msg \d+")


def test_programRunsAsOwnerWithEnvironment(site, user):
    """A |program line runs as the owner with qmail-local's environment; DEFAULT from -default."""
    site.dotqmail(".qmail-list-default",
                  b"|echo $USER $EXT $DEFAULT $(id -u) > prog.out\n./Maildir/\n")
    site.start()
    site.send("someone@example.org", ["joe-list-Foo.Bar@" + ME])
    site.mails()
    with open(os.path.join(site.home, "prog.out"), "rb") as f:
        assert f.read() == b"joeuser list-Foo.Bar Foo.Bar %d\n" % user.uid


def test_virtualDomain(site):
    """virtualdomains maps a domain to a user's extension (.qmail-virt-default)."""
    site.control("virtualdomains", b"virt.example:joe-virt\n")
    site.dotqmail(".qmail-virt-default", b"./Maildir/\n")
    site.start()
    site.send("someone@example.org", ["info@virt.example"])
    [mail] = site.mails()
    assert b"\nDelivered-To: joe-virt-info@virt.example\n" in mail


def test_permanentProgramFailureBounces(site):
    """Exit 100 bounces to the sender, whose mailbox gets qmail's text and the original."""
    site.dotqmail(".qmail-fail", b"|echo no such list; exit 100\n")
    site.start()
    site.send("sender@" + ME, ["joe-fail@" + ME], body=b"Subject: original\r\n\r\nbody\r\n")
    [bounce] = site.mails()
    assert b"\nFrom: MAILER-DAEMON@" + ME.encode() + b"\n" in bounce
    assert (b"<joe-fail@" + ME.encode() + b">:\nno such list\n\n"
            b"--- Below this line is a copy of the message.\n\n"
            b"Return-Path: <sender@" + ME.encode() + b">\n") in bounce
    assert bounce.endswith(b"Subject: original\n\nbody\n")
    site.logLine(r"delivery \d+: failure: no_such_list/")
    site.logLine(r"bounce msg \d+ qp \d+")


def test_temporaryFailureDefers(site):
    """Exit 111 is a deferral; the message stays queued."""
    site.dotqmail(".qmail-later", b"|echo busy; exit 111\n")
    site.start()
    site.send("someone@example.org", ["joe-later@" + ME])
    site.logLine(r"delivery \d+: deferral: busy/")
    assert "end msg" not in site.daemon.log()


def test_exit99StopsLaterLines(site):
    """Exit 99 succeeds and skips the lines after it."""
    site.dotqmail(".qmail-stop", b"|exit 99\n./Maildir/\n")
    site.start()
    site.send("someone@example.org", ["joe-stop@" + ME])
    site.logLine(r"delivery \d+: success: did_0\+0\+1/")
    assert os.listdir(os.path.join(site.home, "Maildir", "new")) == []


def test_loopDetected(site):
    """A message already carrying our Delivered-To line bounces as looping."""
    site.start()
    site.send("sender@" + ME, ["joe@" + ME],
              body=b"Delivered-To: joe@" + ME.encode() + b"\r\nSubject: loop\r\n\r\nx\r\n")
    [bounce] = site.mails()
    assert b"This message is looping: it already has my Delivered-To line. (#5.4.6)" in bounce


def test_stickyHomeAndWritableDotQmailDefer(site, user):
    """A writable .qmail defers; so does a sticky home."""
    site.dotqmail(".qmail-open", b"./Maildir/\n", mode=0o666)
    site.start()
    site.send("someone@example.org", ["joe-open@" + ME])
    site.logLine(r"deferral: Uh-oh:_.qmail_file_is_writable._\(#4.7.0\)/")
    os.chmod(site.home, 0o1755)
    site.send("someone@example.org", ["joe@" + ME])
    site.logLine(r"deferral: Home_directory_is_sticky")


def test_unknownExtensionBouncesToSender(site):
    """A missing .qmail-ext with no default is 'no mailbox here' (#5.1.1), bounced."""
    site.start()
    site.send("sender@" + ME, ["joe-nobody@" + ME])
    [bounce] = site.mails()
    assert b"Sorry, no mailbox here by that name. (#5.1.1)" in bounce


def test_doubleBounceToPostmaster(site, user):
    """A bounce that cannot be delivered goes to postmaster (the alias user) as a double bounce."""
    alias = os.path.join(site.root, "alias")
    for dirpath, dirnames, filenames in os.walk(alias):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), user.uid, user.gid)
    os.chown(alias, user.uid, user.gid)
    site.start()
    site.send("", ["joe-nobody@" + ME])
    [double] = site.mails(os.path.join(alias, "Maildir"))
    assert b"I tried to deliver a bounce message to this address, but the bounce bounced!" in double
    assert double.startswith(b"Return-Path: <#@[]>\n")
    assert b"\n--- Below this line is the original bounce.\n\nReturn-Path: <>\n" in double


def test_mboxLine(site, user):
    """A file line appends to an mbox: From_ line, Return-Path, Delivered-To, >From quoting."""
    site.dotqmail(".qmail-box", b"./Mailbox\n")
    site.start()
    site.send("someone@example.org", ["joe-box@" + ME],
              body=b"Subject: mbox\r\n\r\nFrom the start\r\n")
    site.logLine(r"delivery \d+: success: did_1\+0\+0/")
    path = os.path.join(site.home, "Mailbox")
    with open(path, "rb") as f:
        box = f.read()
    assert re.match(rb"From someone@example.org [A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d "
                    rb"\d\d:\d\d:\d\d \d{4}\nReturn-Path: <someone@example.org>\n"
                    rb"Delivered-To: joe-box@mx.example.com\n", box), box
    assert box.endswith(b"\n\n>From the start\n\n")
    assert os.stat(path).st_uid == user.uid


def test_forwardSenderIsOwnerThenVerp(site, user):
    """
    A list's forward goes out with the list's -owner address as envelope sender, and with
    .qmail-list-owner-default as a VERP sender naming each recipient (seen as Return-Path).
    """
    member = user.home()
    site.dotqmail(".qmail-list", b"&joe-member@" + ME.encode() + b"\n")
    site.dotqmail(".qmail-list-owner", b"./Maildir/\n")
    site.dotqmail(".qmail-member", member.encode() + b"/Maildir/\n")
    site.startForwarding()
    site.send("someone@example.org", ["joe-list@" + ME])
    [first] = site.mails(os.path.join(member, "Maildir"))
    assert first.startswith(b"Return-Path: <joe-list-owner@mx.example.com>\n"
                            b"Delivered-To: joe-member@mx.example.com\n"), first
    assert b"\nDelivered-To: joe-list@mx.example.com\n" in first
    qp = site.logLine(r"success: did_0\+1\+0/qp_(\d+)/").group(1)
    assert b"\nReceived: (qmail %s invoked " % qp.encode() in first, (qp, first)
    site.dotqmail(".qmail-list-owner-default", b"./Maildir/\n")
    site.send("someone@example.org", ["joe-list@" + ME])
    second = site.mails(os.path.join(member, "Maildir"), count=2)
    assert any(m.startswith(b"Return-Path: <joe-list-owner-joe-member=mx.example.com"
                            b"@mx.example.com>\n") for m in second), second


def test_executeBitAllowsOnlyForwards(site, user):
    """A .qmail with the owner-execute bit forwards, and defers a file or program line."""
    site.dotqmail(".qmail-fwd", b"&joe-box@" + ME.encode() + b"\n", mode=0o755)
    site.dotqmail(".qmail-box", b"./Maildir/\n")
    site.dotqmail(".qmail-file", b"./Maildir/\n", mode=0o755)
    site.dotqmail(".qmail-prog", b"|true\n", mode=0o755)
    site.startForwarding()
    site.send("someone@example.org", ["joe-fwd@" + ME])
    [mail] = site.mails()
    assert b"\nDelivered-To: joe-fwd@mx.example.com\n" in mail
    site.send("someone@example.org", ["joe-file@" + ME, "joe-prog@" + ME])
    site.logLine(r"deferral: Uh-oh:_.qmail_has_file_delivery_but_has_x_bit_set._\(#4.7.0\)/")
    site.logLine(r"deferral: Uh-oh:_.qmail_has_prog_delivery_but_has_x_bit_set._\(#4.7.0\)/")


PERMANENT_EXITS = (64, 65, 70, 76, 77, 78, 112)


def test_programExitCodesThatFail(site):
    """Exit 64, 65, 70, 76, 77, 78 and 112 fail permanently, like 100: one bounce lists them all."""
    for code in PERMANENT_EXITS:
        site.dotqmail(".qmail-exit%d" % code, b"|echo code %d; exit %d\n" % (code, code))
    site.start()
    site.send("sender@" + ME, ["joe-exit%d@%s" % (code, ME) for code in PERMANENT_EXITS])
    [bounce] = site.mails()
    for code in PERMANENT_EXITS:
        assert b"<joe-exit%d@%s>:\ncode %d\n" % (code, ME.encode(), code) in bounce, bounce
        site.logLine(r"delivery \d+: failure: code_%d/" % code)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own the alias home as root")
def test_rootOwnedAliasDefers(site):
    """As root, the alias user may not be uid 0: such deliveries are deferred with qmail's text."""
    os.chown(os.path.join(site.root, "alias"), 0, 0)  # init gives it away; make it root's again
    site.start()
    site.send("someone@example.org", ["postmaster@" + ME])
    site.logLine(r"deferral: Not_allowed_to_perform_deliveries_as_root./")


def uidOf(pid):
    """The real uid of process C{pid}, from /proc."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return int(line.split()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged run is the whole suite then")
def test_virtualModeForwardAndForeignUid(user):
    """Run as an ordinary user: forwards are injected and delivered; another uid is deferred."""
    python = pythonpath.requireUserPython(user.uid, user.gid)
    base = tempfile.mkdtemp(dir=user.base)
    site = Setup(user, base, owner=(user.uid, user.gid))
    site.dotqmail(".qmail-fwd", b"&joe-box@" + ME.encode() + b"\n")
    site.dotqmail(".qmail-box", b"./Maildir/\n")
    with open(os.path.join(site.root, "users", "assign"), "wb"):
        pass
    os.chown(os.path.join(site.root, "alias"), 65534, 65534)
    site.start(SystemDaemon(site.root, python, user=(user.uid, user.gid)))
    try:
        assert uidOf(site.daemon.process.pid) == user.uid
        site.send("someone@example.org", ["joe-fwd@" + ME])
        [mail] = site.mails()
        assert b"Delivered-To: joe-box@" + ME.encode() + b"\n" in mail
        assert b"Delivered-To: joe-fwd@" + ME.encode() + b"\n" in mail
        assert re.search(rb"\nReceived: \(qmail \d+ invoked by uid %d\); " % user.uid, mail)
        site.logLine(r"success: did_0\+1\+0/qp_\d+/")
        site.send("someone@example.org", ["postmaster@" + ME])
        site.logLine(r"deferral: Unable_to_deliver_as_uid_65534:_qmailtx_runs_as_uid_%d,_not_root"
                     % user.uid)
    finally:
        site.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="this is the ordinary user's run")
def test_ordinaryUserRun(user):
    """
    As root, this module is also run by pytest as the throwaway user, as an unprivileged suite
    would run it: daemon, workers and mailboxes all under that one uid, every delivery case
    above passing there too (root-only cases skip).
    """
    python = pythonpath.requireUserPython(user.uid, user.gid)
    home = tempfile.mkdtemp(dir=user.base)
    user.own(home)
    env = pythonpath.environ({"HOME": home, "TMPDIR": home})
    run = subprocess.run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", os.path.abspath(__file__)],
        user=user.uid, group=user.gid, extra_groups=[], env=env, cwd=pythonpath.REPO,
        capture_output=True, timeout=600)
    out = (run.stdout + run.stderr).decode("utf-8", "replace")
    assert run.returncode == 0, out[-4000:]
    runs = {name: 2 if "site" in inspect.signature(f).parameters else 1
            for name, f in globals().items() if name.startswith("test_")}
    rootOnly = sum(n for name, n in runs.items()
                   if any(m.name == "skipif" for m in getattr(globals()[name], "pytestmark", [])))
    expected = "%d passed, %d skipped" % (sum(runs.values()) - rootOnly, rootOnly)
    assert expected in run.stdout.decode().strip().splitlines()[-1], out[-4000:]
