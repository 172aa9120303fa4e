"""
qmail-local through a real delivery worker process on temp homes (spec/local.md §5-9).

One worker (a subprocess running as the current user) serves every test of the module, as
the spawner's long-lived workers do.
"""

import os
import re
import stat

import pytest

from tests.component.deliverhelp import Space, Worker, injected, workerEnv, writeFakeQueue

MESSAGE = (b"Received: (qmail 1 invoked by uid 1); 21 Nov 2024 19:26:00 -0000\n"
           b"Subject: hi\n\nFrom the start\n>From quoted\nbody\n")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    s = Space("/tmp")
    yield s
    s.close()


@pytest.fixture(scope="module")
def root(space):
    root = space.fresh("root")
    writeFakeQueue(root)
    return root


@pytest.fixture(scope="module")
def worker(space, root):
    w = Worker(root, workerEnv({"QMAILQUEUE": os.path.join(root, "fakequeue"),
                                "INHERITED": "yes"}), space.workerArgs())
    yield w
    assert w.close() == 0


@pytest.fixture
def home(space):
    return space.fresh("home")


@pytest.fixture
def message(space):
    return space.file(os.path.join(space.fresh("m"), "mess"), MESSAGE)


@pytest.fixture
def tmp_path(space):
    """A directory of the test's own inside the shared space (not the private pytest one)."""
    import pathlib
    return pathlib.Path(space.fresh("t"))


def makeHome(path, mode=0o755):
    return SPACE[0].mkdir(str(path), mode)


def writeFile(path, data, mode=0o644):
    return SPACE[0].file(str(path), data, mode)


SPACE = []


@pytest.fixture(autouse=True)
def _space(space):
    SPACE[:] = [space]


def dot(home, name, text, mode=0o644):
    writeFile(os.path.join(home, name), text, mode)


def deliver(worker, message, home, **kw):
    kw.setdefault("local", b"joe")
    return worker.deliver(message, b"joe", home, **kw)


def newFiles(maildir):
    return sorted(os.listdir(os.path.join(maildir, "new")))


def test_mboxFormat(worker, message, home):
    """mbox: From_ line (UTC, padded day), Return-Path, Delivered-To, >From quoting, blank line."""
    dot(home, ".qmail", b"./Mailbox\n")
    assert deliver(worker, message, home) == b"Kdid 1+0+0\n"
    box = open(os.path.join(home, "Mailbox"), "rb").read()
    assert re.match(rb"From joe@example.org (Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
                    rb"[A-Z][a-z][a-z] \d\d \d\d:\d\d:\d\d \d{4}\n", box)
    assert box.split(b"\n", 1)[1] == (
        b"Return-Path: <joe@example.org>\nDelivered-To: joe@example.com\n"
        + MESSAGE.replace(b"\nFrom the", b"\n>From the").replace(b">From quoted", b">>From quoted")
        + b"\n")
    assert stat.S_IMODE(os.stat(os.path.join(home, "Mailbox")).st_mode) == 0o600


def test_mboxAppendsAndAddsNewline(worker, tmp_path, home):
    """A message without final newline gets one; a second delivery appends."""
    mess = writeFile(tmp_path / "m2", b"Subject: x\n\nno newline")
    dot(home, ".qmail", b"/%s/box\n" % home.encode())
    deliver(worker, mess, home, sender=b"")
    deliver(worker, mess, home, sender=b"")
    box = open(os.path.join(home, "box"), "rb").read()
    assert box.count(b"From MAILER-DAEMON ") == 2
    assert box.count(b"Return-Path: <>\n") == 2
    assert box.endswith(b"no newline\n\n")


def test_mboxOpenError(worker, message, home):
    """An mbox that cannot be opened: Z C{Unable to open <file>: <error>. (#4.2.1)}."""
    dot(home, ".qmail", b"./nodir/box\n")
    assert deliver(worker, message, home) == \
        b"ZUnable to open ./nodir/box: file does not exist. (#4.2.1)\n"


def test_mboxWriteError(worker, message, home):
    """A write error: Z C{Unable to write <file>: <error>. (#4.3.0)}."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    dot(home, ".qmail", b"/dev/full\n")
    assert deliver(worker, message, home) == \
        b"ZUnable to write /dev/full: out of disk space. (#4.3.0)\n"


def test_mboxWriteErrorMidMessage(worker, tmp_path, home):
    """A write that fails while the message is copied (not only at the last flush) is still
    a write error, not a read error: the text names the file."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    big = writeFile(tmp_path / "big", b"Subject: big\n\n" + (b"y" * 79 + b"\n") * 4000)
    dot(home, ".qmail", b"/dev/full\n")
    assert deliver(worker, big, home) == \
        b"ZUnable to write /dev/full: out of disk space. (#4.3.0)\n"


def test_maildir(worker, message, home):
    """maildir: one file in new/ with RPLINE + DTLINE + message, no From_ line, no quoting."""
    for sub in ("Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
        makeHome(os.path.join(home, sub), 0o700)
    dot(home, ".qmail", b"./Maildir/\n")
    assert deliver(worker, message, home, local=b"Joe", domain=b"Example.COM") == b"Kdid 1+0+0\n"
    [name] = newFiles(os.path.join(home, "Maildir"))
    assert not name.startswith(".") and ":" not in name
    assert open(os.path.join(home, "Maildir", "new", name), "rb").read() == (
        b"Return-Path: <joe@example.org>\nDelivered-To: Joe@Example.COM\n" + MESSAGE)
    assert os.listdir(os.path.join(home, "Maildir", "tmp")) == []


def test_maildirMissing(worker, message, home):
    """A maildir that does not exist: Z C{Unable to chdir to maildir. (#4.2.1)}."""
    dot(home, ".qmail", b"./Nope/\n")
    assert deliver(worker, message, home) == b"ZUnable to chdir to maildir. (#4.2.1)\n"


def test_defaultDeliveryWhenNoDotQmail(worker, message, home):
    """No .qmail with empty dash: defaultdelivery is obeyed."""
    assert deliver(worker, message, home, default=b"./Mailbox") == b"Kdid 1+0+0\n"
    assert os.path.exists(os.path.join(home, "Mailbox"))


def test_defaultDeliveryWhenEmptyClearsForwardOnly(worker, message, home):
    """An empty .qmail (even with the x bit) means defaultdelivery, not forward-only."""
    dot(home, ".qmail", b"", 0o744)
    assert deliver(worker, message, home) == b"Kdid 1+0+0\n"


def test_noMailboxWithDash(worker, message, home):
    """No matching file with a dash: D C{Sorry, no mailbox here by that name. (#5.1.1)}."""
    assert deliver(worker, message, home, dash=b"-", ext=b"zz") == \
        b"DSorry, no mailbox here by that name. (#5.1.1)\n"


def test_extensionAndDefaultEnv(worker, message, home):
    """C{.qmail-list-default} serves ext C{list-Foo.Bar}; DEFAULT is the covered part, original case."""
    dot(home, ".qmail-list-default", b"|echo \"$DEFAULT\" > default.txt\n")
    assert deliver(worker, message, home, local=b"joe-list-Foo.Bar", dash=b"-",
                   ext=b"list-Foo.Bar") == b"Kdid 0+0+1\n"
    assert open(os.path.join(home, "default.txt"), "rb").read() == b"Foo.Bar\n"


def test_dotsBecomeColons(worker, message, home):
    """An extension with dots is looked up with colons, lowercased."""
    dot(home, ".qmail-www:example", b"./www\n")
    assert deliver(worker, message, home, dash=b"-", ext=b"WWW.Example") == b"Kdid 1+0+0\n"


def test_exactFileLeavesDefaultUnset(worker, message, home):
    """With the exact file DEFAULT is unset."""
    dot(home, ".qmail-x", b"|echo \"${DEFAULT-unset}\"\n")
    assert deliver(worker, message, home, dash=b"-", ext=b"x") == b"Kunset\ndid 0+0+1\n"


def test_programEnvironment(worker, message, home):
    """Programs get every variable of spec §8 plus the daemon's own environment."""
    dot(home, ".qmail-a-default", b"|env > env.txt\n")
    deliver(worker, message, home, local=b"joe-a-b-c-d", dash=b"-", ext=b"a-b-c-d",
            domain=b"mail.ex.co.uk", sender=b"s p@x.org")
    env = dict(line.split(b"=", 1) for line in
               open(os.path.join(home, "env.txt"), "rb").read().splitlines() if b"=" in line)
    assert env[b"SENDER"] == b"s p@x.org"
    assert env[b"NEWSENDER"] == b"s p@x.org"
    assert env[b"RECIPIENT"] == b"joe-a-b-c-d@mail.ex.co.uk"
    assert env[b"USER"] == b"joe" and env[b"HOME"] == home.encode()
    assert (env[b"HOST"], env[b"HOST2"], env[b"HOST3"], env[b"HOST4"]) == (
        b"mail.ex.co.uk", b"mail.ex.co", b"mail.ex", b"mail")
    assert env[b"LOCAL"] == b"joe-a-b-c-d"
    assert (env[b"EXT"], env[b"EXT2"], env[b"EXT3"], env[b"EXT4"]) == (
        b"a-b-c-d", b"b-c-d", b"c-d", b"d")
    assert env[b"DEFAULT"] == b"b-c-d"
    assert env[b"INHERITED"] == b"yes"
    assert env[b"RPLINE"] == b'Return-Path: <"s p"@x.org>'
    assert env[b"DTLINE"] == b"Delivered-To: joe-a-b-c-d@mail.ex.co.uk"
    assert env[b"UFLINE"].startswith(b"From s-p@x.org ")


def test_hostWithoutDotsRepeats(worker, message, home):
    """HOST2..4 repeat HOST when it has too few dots; EXT2..4 empty without dashes."""
    dot(home, ".qmail", b"|echo \"$HOST2 $HOST3 $HOST4 [$EXT2]\"\n")
    assert deliver(worker, message, home, domain=b"localhost") == \
        b"Klocalhost localhost localhost []\ndid 0+0+1\n"


def test_programStdinCwdAndPreline(worker, message, home):
    """A program reads the message from byte 0 (no added headers) in the home directory."""
    dot(home, ".qmail", b"|cat > copy; pwd > where\n|cat > copy2\n")
    assert deliver(worker, message, home) == b"Kdid 0+0+2\n"
    assert open(os.path.join(home, "copy"), "rb").read() == MESSAGE
    assert open(os.path.join(home, "copy2"), "rb").read() == MESSAGE
    assert open(os.path.join(home, "where"), "rb").read().strip() == \
        os.path.realpath(home).encode()


@pytest.mark.parametrize("code, letter", [
    (0, b"K"), (100, b"D"), (64, b"D"), (65, b"D"), (70, b"D"), (76, b"D"), (77, b"D"),
    (78, b"D"), (112, b"D"), (111, b"Z"), (1, b"Z"), (2, b"Z"), (75, b"Z"),
])
def test_programExitCodes(worker, message, home, code, letter):
    """Program exit codes: 0 ok; 100, 64, 65, 70, 76, 77, 78, 112 permanent; others temporary."""
    dot(home, ".qmail", b"|echo out; echo err >&2; exit %d\n./after\n" % code)
    report = deliver(worker, message, home)
    assert report[:1] == letter
    assert report.startswith(letter + b"out\nerr\n")
    assert os.path.exists(os.path.join(home, "after")) == (code == 0)


def test_program99StopsButForwards(worker, root, message, home):
    """Exit 99: later lines ignored, collected forwards still injected."""
    before = len(injected(root))
    dot(home, ".qmail", b"&a@x.org\n|exit 99\n./never\n&b@x.org\n")
    report = deliver(worker, message, home)
    assert re.fullmatch(rb"Kdid 0\+1\+1\nqp \d+\n", report)
    assert not os.path.exists(os.path.join(home, "never"))
    assert injected(root)[before:][0][1] == b"Fjoe@example.org\0Ta@x.org\0\0"


def test_programCrashed(worker, message, home):
    """A program killed by a signal: Z C{Aack, child crashed. (#4.3.0)}."""
    dot(home, ".qmail", b"|kill -9 $$\n")
    assert deliver(worker, message, home) == b"ZAack, child crashed. (#4.3.0)\n"


def test_failureStopsBeforeForwarding(worker, root, message, home):
    """A failing line stops at once: nothing is forwarded."""
    before = len(injected(root))
    dot(home, ".qmail", b"&a@x.org\n|exit 111\n")
    assert deliver(worker, message, home) == b"Z"
    assert len(injected(root)) == before


def test_forward(worker, root, message, home):
    """Forwards: one injection, DTLINE + message, sender NEWSENDER, recipients as written."""
    before = len(injected(root))
    dot(home, ".qmail", b"bob@example.net\n& spaced@x\n&c\n#comment\n")
    report = deliver(worker, message, home)
    assert re.fullmatch(rb"Kdid 0\+3\+0\nqp \d+\n", report)
    [(msg, env)] = injected(root)[before:]
    assert msg == b"Delivered-To: joe@example.com\n" + MESSAGE
    assert env == b"Fjoe@example.org\0Tbob@example.net\0T spaced@x\0Tc\0\0"


def test_forwardOwnerAndVerp(worker, root, message, home):
    """With C{.qmail-list-owner} the forward sender is local-owner@domain; VERP with -owner-default."""
    dot(home, ".qmail-list", b"&member@x.org\n")
    dot(home, ".qmail-list-owner", b"&owner@x.org\n")
    before = len(injected(root))
    deliver(worker, message, home, local=b"joe-list", dash=b"-", ext=b"list")
    assert injected(root)[before:][0][1].startswith(b"Fjoe-list-owner@example.com\0")
    dot(home, ".qmail-list-owner-default", b"&owner@x.org\n")
    deliver(worker, message, home, local=b"joe-list", dash=b"-", ext=b"list")
    assert injected(root)[-1][1].startswith(b"Fjoe-list-owner-@example.com-@[]\0")
    deliver(worker, message, home, local=b"joe-list", dash=b"-", ext=b"list", sender=b"")
    assert injected(root)[-1][1].startswith(b"F\0")


@pytest.mark.parametrize("code, text, expect", [
    (11, None, b"DUnable to forward message: envelope address too long for qq (#5.1.3).\n"),
    (53, None, b"ZUnable to forward message: qq write error or disk full (#4.3.0).\n"),
    (82, b"Dcustom refusal", b"DUnable to forward message: custom refusal.\n"),
])
def test_forwardFailure(worker, root, message, home, code, text, expect):
    """A queue failure: C{Unable to forward message: <text>.}, D if the text is D..., else Z."""
    writeFile(os.path.join(root, "qqexit"), b"%d" % code)
    if text:
        writeFile(os.path.join(root, "qqtext"), text)
    try:
        dot(home, ".qmail", b"&a@x.org\n")
        assert deliver(worker, message, home) == expect
    finally:
        os.unlink(os.path.join(root, "qqexit"))
        if text:
            os.unlink(os.path.join(root, "qqtext"))


def test_loopDetected(worker, tmp_path, home):
    """A header line equal to our Delivered-To line: D looping (case-sensitive, headers only)."""
    dot(home, ".qmail", b"./Mailbox\n")
    looping = writeFile(tmp_path / "l", b"X: 1\nDelivered-To: joe@example.com\n\nbody\n")
    assert deliver(worker, looping, home) == \
        b"DThis message is looping: it already has my Delivered-To line. (#5.4.6)\n"
    other = writeFile(tmp_path / "o", b"Delivered-To: JOE@example.com\n\n"
                      b"Delivered-To: joe@example.com\n")
    assert deliver(worker, other, home) == b"Kdid 1+0+0\n"


@pytest.mark.parametrize("mode, expect", [
    (0o757, b"ZUh-oh: home directory is writable. (#4.7.0)\n"),
    (0o1755, b"ZHome directory is sticky: user is editing his .qmail file. (#4.2.1)\n"),
    (0o775, b"Kdid 1+0+0\n"),
])
def test_homeChecks(worker, message, tmp_path, mode, expect):
    """World-writable or sticky home defers; group-writable is allowed."""
    home = makeHome(tmp_path / "h")
    dot(home, ".qmail", b"./Mailbox\n")
    os.chmod(home, mode)
    assert deliver(worker, message, home) == expect


def test_homeMissing(worker, message, tmp_path):
    """A home that cannot be entered: Z C{Unable to switch to <home>: ...}."""
    home = str(tmp_path / "gone")
    assert deliver(worker, message, home) == \
        b"ZUnable to switch to " + home.encode() + b": file does not exist. (#4.3.0)\n"


def test_relativeHomeIsUsage(worker, message):
    """A homedir not starting with / is a usage error (exit 100, D)."""
    assert deliver(worker, message, "relative").startswith(b"Dqmail-local: usage: ")


@pytest.mark.parametrize("text, mode, expect", [
    (b"./Mailbox\n", 0o646, b"ZUh-oh: .qmail file is writable. (#4.7.0)\n"),
    (b"./Mailbox\n", 0o744, b"ZUh-oh: .qmail has file delivery but has x bit set. (#4.7.0)\n"),
    (b"|true\n", 0o744, b"ZUh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)\n"),
    (b"&a@x.org\n+list\n./Mailbox\n", 0o644,
     b"ZUh-oh: .qmail has file delivery but has x bit set. (#4.7.0)\n"),
    (b"\n./Mailbox\n", 0o644, b"ZUh-oh: first line of .qmail file is blank. (#4.2.1)\n"),
])
def test_badDotQmail(worker, message, home, text, mode, expect):
    """Unsafe or malformed .qmail files defer with qmail-local's texts."""
    dot(home, ".qmail", text, mode)
    assert deliver(worker, message, home) == expect


def test_forwardOnlyAllowsForwards(worker, root, message, home):
    """With the x bit, forward lines still work."""
    dot(home, ".qmail", b"&a@x.org\n", 0o744)
    assert deliver(worker, message, home).startswith(b"Kdid 0+1+0\nqp ")


def test_unreadableDotQmail(worker, message, home):
    """A .qmail we may not open: Z C{Unable to open .qmail: access denied. (#4.3.0)}."""
    dot(home, ".qmail", b"./Mailbox\n", 0o000)
    assert deliver(worker, message, home) == \
        b"ZUnable to open .qmail: access denied. (#4.3.0)\n"


def test_longReportCut(worker, message, home):
    """A report longer than 3000 bytes is cut to 2966 bytes plus the notice."""
    dot(home, ".qmail", b"|printf %05000d 0\n")
    report = deliver(worker, message, home)
    assert report == b"K" + b"0" * 2966 + b"\nError report too long, sorry.\n"


def test_missingMessage(worker, home):
    """A message file that cannot be opened is a temporary failure."""
    assert deliver(worker, "/nonexistent/mess", home) == \
        b"Zqmail-spawn unable to open message. (#4.3.0)\n"


def test_runsAsTheUser(worker, space, message, home):
    """Programs run with the worker's uid/gid (the throwaway user when the suite runs as root)."""
    dot(home, ".qmail", b"|echo $(id -u) $(id -g) $(id -G)\n")
    assert deliver(worker, message, home) == b"K%d %d %d\ndid 0+0+1\n" % (
        space.uid, space.gid, space.gid)


def test_rootRefused(space, root, message, home):
    """A worker that would deliver as root answers C{Not allowed to perform deliveries as root.}"""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a root worker")
    w = Worker(root, workerEnv(), ["--uid", "0", "--gid", "0"])
    try:
        dot(home, ".qmail", b"./Mailbox\n")
        assert w.deliver(message, b"root", home, b"root") == \
            b"ZNot allowed to perform deliveries as root.\n"
        assert not os.path.exists(os.path.join(home, "Mailbox"))
    finally:
        w.close()


def test_programTimeoutKillsGroup(space, root, message, home):
    """A program running past the timeout is killed with its process group: C{Aack, child crashed.}"""
    w = Worker(root, workerEnv(), space.workerArgs() + ["--timeout", "1"])
    try:
        dot(home, ".qmail", b"|sleep 30 & sleep 30\n")
        assert w.deliver(message, b"joe", home, b"joe") == b"ZAack, child crashed. (#4.3.0)\n"
    finally:
        w.close()
