"""
The injection tools as commands (spec/tools.md §1, §2, §5; spec/local.md §10): qmailtx
inject and sendmail reaching todo/ through the real `qmailtx queue`, their exit codes and
messages, the delivery filters, and install-compat's wrappers run from another directory.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from qmailtx.envelope import parseRecords
from qmailtx.rootdir import createRoot

TOOL = [sys.executable, "-m", "qmailtx.scripts.main"]
BASE_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path), "USER": "joe"}


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    createRoot(str(r), "mx.example.com")
    return r


def run(args, stdin=b"", env=None, cwd=None, command=None, **kw):
    full = dict(BASE_ENV)
    full.update(env or {})
    return subprocess.run((command or TOOL) + list(args), input=stdin, capture_output=True,
                          env=full, cwd=cwd, timeout=60, **kw)


def queued(root):
    """Every message in todo/: (mess content, sender, recipients)."""
    out = []
    for name in sorted(os.listdir(root / "queue" / "todo")):
        records = parseRecords((root / "queue" / "todo" / name).read_bytes())
        mess = root / "queue" / "mess" / str(int(name) % 23) / name
        out.append((mess.read_bytes(), dict(records)[b"F"],
                    [v for k, v in records if k == b"T"]))
    return out


def test_injectReachesTodo(root):
    """qmailtx inject: header completed, Bcc gone, envelope from the header, queued by uid."""
    result = run(["inject", "--root", str(root)],
                 b"To: bob\nBcc: carol@else.org\nSubject: hi\n\nbody\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    [(mess, sender, rcpts)] = queued(root)
    received, header = mess.split(b"\n", 1)
    assert received.startswith(b"Received: (qmail ")
    assert b" invoked by uid %d); " % os.getuid() in received
    assert b"From: joe@mx.example.com\n" in header and b"To: bob@mx.example.com\n" in header
    assert b"Bcc" not in header and header.endswith(b"Subject: hi\n\nbody\n")
    assert sender == b"joe@mx.example.com"
    assert rcpts == [b"bob@mx.example.com", b"carol@else.org"]


def test_injectRootFromEnvironment(root, tmp_path):
    """Without --root, $QMAILHOME names the root, whatever the working directory."""
    result = run(["inject", "-f", "s@x.org", "r@y.org"], b"\n", env={"QMAILHOME": str(root)},
                 cwd=str(tmp_path))
    assert result.returncode == 0
    [(_, sender, rcpts)] = queued(root)
    assert (sender, rcpts) == (b"s@x.org", [b"r@y.org"])


def test_injectPrintOnly(root):
    """-n prints Return-Path and the message; nothing is queued."""
    result = run(["inject", "--root", str(root), "-n", "-f", "me", "r"], b"Subject: s\n\nb")
    assert result.returncode == 0 and result.stdout.startswith(b"Return-Path: <me@mx.example.com>\n")
    assert result.stdout.endswith(b"Cc: recipient list not shown: ;\nSubject: s\n\nb\n")
    assert queued(root) == []


def fakeQueue(tmp_path, script):
    path = tmp_path / "qq"
    path.write_text("#!/bin/sh\ncat >/dev/null\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("script,code,text", [
    ("exit 11", 100, b"envelope address too long for qq (#5.1.3)"),
    ("exit 71", 111, b"mail server temporarily rejected message (#4.3.0)"),
    ("printf 'Dgo away (#5.7.1)' >&6; exit 82", 100, b"go away (#5.7.1)"),
    ("kill -9 $$", 111, b"qq crashed (#4.3.0)"),
])
def test_injectQueueFailures(root, tmp_path, script, code, text):
    """A queue program's failure: qmail-inject: fatal: <qmail.c's text>, 100 or 111."""
    result = run(["inject", "--root", str(root), "r"], b"\n",
                 env={"QMAILQUEUE": fakeQueue(tmp_path, script)})
    assert (result.returncode, result.stderr) == (code, b"qmail-inject: fatal: " + text + b"\n")


def test_injectQmailqueueGetsEnvelope(root, tmp_path):
    """QMAILQUEUE is run in the root with the message on fd 0 and the envelope on fd 1."""
    out = tmp_path / "out"
    qq = fakeQueue(tmp_path, f"pwd > {out}.cwd; cat <&1 > {out}.env")
    assert run(["inject", "--root", str(root), "-f", "", "a", "b@c.org"], b"\n",
               env={"QMAILQUEUE": qq}).returncode == 0
    assert (tmp_path / "out.env").read_bytes() == b"F\0Ta@mx.example.com\0Tb@c.org\0\0"
    assert (tmp_path / "out.cwd").read_text().strip() == str(root)


def test_injectNullClient(root):
    """With control/qmqpservers the message goes to QMQP, not to todo/ (here: refused)."""
    (root / "control" / "qmqpservers").write_text("127.0.0.1\n")
    result = run(["inject", "--root", str(root), "r"], b"\n")
    assert (result.returncode, result.stderr) == (
        111, b"qmail-inject: fatal: connection to mail server rejected (#4.4.1)\n")
    assert queued(root) == []


@pytest.mark.parametrize("args,code,err", [
    (["-x"], 100, b"qmail-inject: illegal option -- x\n"),
    (["-f"], 100, b"qmail-inject: option requires an argument -- f\n"),
    (["x@(y"], 100, b"qmail-inject: fatal: unable to parse address: x@(y\n"),
])
def test_injectUsageErrors(root, args, code, err):
    """Bad flags and unparsable arguments are permanent failures with qmail's words."""
    result = run(["inject", "--root", str(root)] + args, b"\n")
    assert (result.returncode, result.stderr) == (code, err)


def test_injectMissingRoot(tmp_path):
    """A root that does not exist: qmail-inject's chdir failure, temporary, naming the root
    it looked for and how to give another."""
    missing = str(tmp_path / "none").encode()
    result = run(["inject", "--root", missing.decode(), "r"], b"\n")
    assert (result.returncode, result.stderr) == (
        111, b"qmail-inject: fatal: internal bug: no qmail root at " + missing
        + b" (give --root DIR or set QMAILHOME)\n")


def test_sendmailFlags(root):
    """sendmail -t -i -oi -f -F: header recipients plus arguments, sender and From from -f."""
    result = run(["sendmail", "--root", str(root), "-t", "-i", "-oi", "-FIgnored Name",
                  "-f", "me@there.org", "extra@else.org"],
                 b"To: bob\nBcc: hid@x.org\nSubject: s\n\nb\n", env={"NAME": "Someone"})
    assert (result.returncode, result.stderr) == (0, b"")
    [(mess, sender, rcpts)] = queued(root)
    assert sender == b"me@there.org"
    assert rcpts == [b"extra@else.org", b"bob@mx.example.com", b"hid@x.org"]
    assert b"\nFrom: me@there.org\n" in mess and b"Bcc" not in mess


def test_sendmailArgumentsOnly(root):
    """Without -t only the arguments are recipients; -F names the From field."""
    result = run(["sendmail", "--root", str(root), "-F", "Joe User", "--", "r@x.org"],
                 b"To: bob\n\nb\n")
    assert result.returncode == 0
    [(mess, sender, rcpts)] = queued(root)
    assert rcpts == [b"r@x.org"] and sender == b"joe@mx.example.com"
    assert b'\nFrom: "Joe User" <joe@mx.example.com>\n' in mess


def test_sendmailUsage(root):
    """An unknown flag or -b mode: sendmail's usage line, exit 100."""
    usage = b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]\n"
    result = run(["sendmail", "--root", str(root), "-z", "r"], b"\n")
    assert (result.returncode, result.stderr) == (100, b"sendmail: illegal option -- z\n" + usage)
    result = run(["sendmail", "--root", str(root), "-bz"], b"")
    assert (result.returncode, result.stderr) == (100, usage)


def test_sendmailQueueListing(root):
    """-bp lists the queue as qmail-qread does (a preprocessed message with its recipients)."""
    queue = root / "queue"
    (queue / "mess" / "8" / "100").write_bytes(b"x" * 10)
    (queue / "info" / "8" / "100").write_bytes(b"Fme@x.org\0")
    (queue / "remote" / "8" / "100").write_bytes(b"Tr@y.org\0")
    result = run(["sendmail", "--root", str(root), "-bp"])
    assert result.returncode == 0
    assert b" #100  10  <me@x.org> \n\tremote\tr@y.org\n" in result.stdout
    assert result.stdout == run(["qread", "--root", str(root)]).stdout


def test_sendmailSmtpOnStdio(root):
    """-bs speaks qmail-smtpd on stdin/stdout and queues through the queue program."""
    dialogue = (b"HELO x\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<c@mx.example.com>\r\nDATA\r\n"
                b"Subject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    result = run(["sendmail", "--root", str(root), "-bs"], dialogue)
    lines = result.stdout.split(b"\r\n")
    assert lines[0] == b"220 mx.example.com ESMTP" and lines[5].startswith(b"250 ok ")
    assert lines[6] == b"221 mx.example.com"
    [(mess, sender, rcpts)] = queued(root)
    assert (sender, rcpts) == (b"a@b.org", [b"c@mx.example.com"])
    assert b"invoked by uid %d)" % os.getuid() in mess
    assert b"(sendmail-bs@127.0.0.1)" in mess


@pytest.mark.parametrize("tool,args,code,err", [
    ("bouncesaying", ["no thanks"], 100, b"no thanks\n"),
    ("bouncesaying", ["no thanks", "true"], 100, b"no thanks\n"),
    ("bouncesaying", ["no thanks", "false"], 0, b""),
    ("bouncesaying", ["no thanks", "sh", "-c", "exit 111"], 111,
     b"bouncesaying: fatal: temporary child error\n"),
    ("bouncesaying", [], 100, b"bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]\n"),
    ("except", ["true"], 100, b""),
    ("except", ["false"], 0, b""),
    ("except", ["sh", "-c", "kill -9 $$"], 111, b"except: fatal: child crashed\n"),
    ("except", ["/nonexistent/prog"], 0, b""),
    ("condredirect", ["a@b.org", "false"], 0, b""),
    ("condredirect", ["a@b.org", "sh", "-c", "exit 111"], 111,
     b"condredirect: fatal: temporary child error\n"),
    ("condredirect", ["a@b.org"], 100,
     b"condredirect: usage: condredirect newaddress program [ arg ... ]\n"),
])
def test_filterExitCodes(tool, args, code, err):
    """The filters turn their program's exit into the code a .qmail line acts on."""
    result = run([tool] + args, b"message\n")
    assert (result.returncode, result.stderr) == (code, err)


def test_forward(root, tmp_path):
    """forward queues DTLINE + message for its arguments with $NEWSENDER; says its qp."""
    env = {"NEWSENDER": "new@x.org", "DTLINE": "Delivered-To: joe@mx.example.com\n"}
    result = run(["forward", "--root", str(root), "a@b.org", "c@d.org"], b"Subject: s\n\nb\n",
                 env=env)
    assert result.returncode == 0 and result.stderr.startswith(b"forward: qp ")
    [(mess, sender, rcpts)] = queued(root)
    assert (sender, rcpts) == (b"new@x.org", [b"a@b.org", b"c@d.org"])
    assert mess.split(b"\n", 1)[1] == b"Delivered-To: joe@mx.example.com\nSubject: s\n\nb\n"
    assert run(["forward", "--root", str(root), "a@b.org"], env={"DTLINE": "x"}).stderr == (
        b"forward: fatal: NEWSENDER not set\n")


def test_condredirect(root, tmp_path):
    """Program exit 0: the whole message (stdin rewound) goes to the new address; exit 99."""
    message = tmp_path / "m"
    message.write_bytes(b"Subject: s\n\nb\n")
    env = {"SENDER": "orig@x.org", "DTLINE": "Delivered-To: joe@mx.example.com\n"}
    with open(message, "rb") as stdin:
        result = subprocess.run(
            TOOL + ["condredirect", "--root", str(root), "new@y.org", "sh", "-c",
                    "cat >/dev/null"], stdin=stdin, capture_output=True,
            env={**BASE_ENV, **env}, timeout=60)
    assert result.returncode == 99 and result.stderr.startswith(b"condredirect: qp ")
    [(mess, sender, rcpts)] = queued(root)
    assert (sender, rcpts) == (b"orig@x.org", [b"new@y.org"])
    assert mess.endswith(b"\nDelivered-To: joe@mx.example.com\nSubject: s\n\nb\n")


def test_installCompatWrappers(root, tmp_path):
    """Wrappers in ROOT/bin run qmailtx with that root from any directory, as qmail's do."""
    assert run(["install-compat", str(root)]).returncode == 0
    bindir = root / "bin"
    for name in ("qmail-queue", "qmail-inject", "sendmail", "preline", "qmail-qread",
                 "qmail-qstat", "maildirmake", "tcprules", "qmail-newu"):
        assert os.access(bindir / name, os.X_OK), name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run([], b"To: bob\n\nb\n", cwd=str(elsewhere), command=[str(bindir / "qmail-inject")])
    assert (result.returncode, result.stderr) == (0, b"")
    result = run(["-f", "me@x.org", "r@y.org"], b"\n", cwd=str(elsewhere),
                 command=[str(bindir / "sendmail")])
    assert result.returncode == 0
    assert [q[2] for q in queued(root)] in ([[b"bob@mx.example.com"], [b"r@y.org"]],
                                            [[b"r@y.org"], [b"bob@mx.example.com"]])
    stat = run([], cwd=str(elsewhere), command=[str(bindir / "qmail-qstat")])
    assert stat.stdout == b"messages in queue: 2\nmessages in queue but not yet preprocessed: 2\n"
    result = run(["new"], cwd=str(elsewhere), command=[str(bindir / "maildirmake")])
    assert result.returncode == 0 and (elsewhere / "new" / "cur").is_dir()
    mailq = run([], cwd=str(elsewhere), command=[str(bindir / "mailq")])
    qread = run([], cwd=str(elsewhere), command=[str(bindir / "qmail-qread")])
    assert (mailq.returncode, mailq.stdout, mailq.stderr) == (0, qread.stdout, qread.stderr)
    assert b" mailq --root " in (bindir / "mailq").read_bytes()


def test_installCompatMailqTakesSendmailFlags(root, tmp_path):
    """bin/mailq is sendmail invoked as mailq: sendmail's flags and arguments are accepted and the queue listed; an unknown flag is sendmail's usage, 100."""
    assert run(["install-compat", str(root)]).returncode == 0
    queue = root / "queue"
    (queue / "mess" / "8" / "100").write_bytes(b"x" * 10)
    (queue / "info" / "8" / "100").write_bytes(b"Fme@x.org\0")
    (queue / "remote" / "8" / "100").write_bytes(b"Tr@y.org\0")
    mailq = [str(root / "bin" / "mailq")]
    qread = run([], cwd=str(tmp_path), command=[str(root / "bin" / "qmail-qread")])
    assert b" #100  10  <me@x.org> \n\tremote\tr@y.org\n" in qread.stdout
    for args in (["-v"], ["-i", "-oem", "r@y.org"], ["-bp", "-z"], ["-bm"]):
        result = run(args, cwd=str(tmp_path), command=mailq)
        assert (result.returncode, result.stdout, result.stderr) == (0, qread.stdout, b""), args
    usage = b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]\n"
    result = run(["-z"], cwd=str(tmp_path), command=mailq)
    assert (result.returncode, result.stdout, result.stderr) == (
        100, b"", b"mailq: illegal option -- z\n" + usage)
    result = run(["sendmail", "--root", str(root), "-bp", "-z"], cwd=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, qread.stdout, b"")


def test_installCompatQueueWrapperFromQmailCaller(root, tmp_path):
    """bin/qmail-queue behaves as qmail-queue for a caller that sets QMAILQUEUE to it."""
    assert run(["install-compat", str(root)]).returncode == 0
    result = run(["inject", "--root", str(root), "r@x.org"], b"\n",
                 env={"QMAILQUEUE": str(root / "bin" / "qmail-queue")}, cwd=str(tmp_path))
    assert result.returncode == 0 and len(queued(root)) == 1


def test_installCompatKeepsForeignFiles(root):
    """A file in bin/ that install-compat did not write is never replaced; rerunning is fine."""
    assert run(["install-compat", str(root)]).returncode == 0
    assert run(["install-compat", str(root)]).returncode == 0
    (root / "bin" / "except").write_text("#!/bin/sh\necho mine\n")
    result = run(["install-compat", str(root)])
    assert result.returncode == 111 and b"not written by install-compat" in result.stderr
    assert (root / "bin" / "except").read_text() == "#!/bin/sh\necho mine\n"
    assert run(["install-compat"]).returncode == 100


def worldExecutable(path):
    """Can any user run C{path}: o+x on it and every directory above it?"""
    path = os.path.realpath(path)
    while path != "/":
        if not os.stat(path).st_mode & 0o001:
            return False
        path = os.path.dirname(path)
    return True


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run as another uid")
def test_injectAsOrdinaryUser():
    """Run as an unprivileged uid owning the root: the queue says 'invoked by uid N'."""
    uid = 65534
    top = tempfile.mkdtemp(prefix="qmailtx-inject-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        root = createRoot(os.path.join(top, "root"), "mx.example.com")
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.lchown(name, uid, uid)
        python = sys.executable
        if not worldExecutable(python):
            python = "/usr/bin/python3"
        result = run(["inject", "--root", root, "r@x.org"], b"\n", user=uid, group=uid,
                     extra_groups=[], cwd="/", command=[python, "-m", "qmailtx.scripts.main"])
        assert (result.returncode, result.stderr) == (0, b"")
        [(mess, _, _)] = queued(pathlib.Path(root))
        assert b"invoked by uid %d)" % uid in mess
    finally:
        shutil.rmtree(top)
