"""
The local-delivery tools as commands: newu, pw2u, preline, local (-n), dotqm, qmlock
(spec/tools.md §5, §7; spec/local.md §2, §5, §10).
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from qmailtx.cdbfile import CdbFile


def run(args, stdin=b"", env=None, cwd=None):
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", *args], input=stdin,
                          capture_output=True, env=full, cwd=cwd, timeout=60)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "users").mkdir()
    return tmp_path


def test_newuBuildsCdb(root):
    """qmail-newu turns users/assign into users/cdb with the spec's records."""
    (root / "users" / "assign").write_bytes(b"+joe-:joe:507:100:/home/joe:-::\n=joe:joe:507:100:/home/joe:::\n.\n")
    result = run(["newu", "--root", str(root)])
    assert result.returncode == 0 and result.stderr == b""
    cdb = CdbFile.fromPath(str(root / "users" / "cdb"))
    assert cdb.get(b"!joe-") == b"joe\x00507\x00100\x00/home/joe\x00-\x00"
    assert cdb.get(b"!joe\x00") == b"joe\x00507\x00100\x00/home/joe\x00\x00"
    assert cdb.get(b"") == b"-"
    assert not (root / "users" / "cdb.tmp").exists()


def test_newuBadFormatLeavesCdb(root):
    """A bad assign file: C{bad format in users/assign}, exit 111, old cdb untouched."""
    (root / "users" / "assign").write_bytes(b"=a:u:1:1:/h:::\n.\n")
    assert run(["newu", "--root", str(root)]).returncode == 0
    before = (root / "users" / "cdb").read_bytes()
    (root / "users" / "assign").write_bytes(b"=a:u:1:1:/h:::\n")
    result = run(["newu", "--root", str(root)])
    assert (result.returncode, result.stderr) == (
        111, b"qmail-newu: fatal: bad format in users/assign\n")
    assert (root / "users" / "cdb").read_bytes() == before


def test_newuMissingAssign(root):
    """No users/assign: C{unable to open users/assign}, exit 111."""
    result = run(["newu", "--root", str(root)])
    assert (result.returncode, result.stderr) == (
        111, b"qmail-newu: fatal: unable to open users/assign\n")


UID = 4242 if os.geteuid() == 0 else os.getuid()
"""The uid the fake passwd file gives its users (root itself would be skipped)."""


@pytest.fixture
def homes(tmp_path):
    uid = UID
    for name in ("joe", "alias", "bob"):
        (tmp_path / name).mkdir()
        if os.geteuid() == 0 and name != "bob":
            os.chown(tmp_path / name, uid, 0)
    other = uid + 1
    passwd = (b"root:x:0:0:root:/root:/bin/sh\n"
              b"joe:x:%d:100:Joe:%s:/bin/sh\n"
              b"Upper:x:%d:100::%s:/bin/sh\n"
              b"alias:x:%d:200::%s:/bin/false\n"
              b"bob:x:%d:100::%s:/bin/sh\n"
              b"gone:x:%d:100::%s:/bin/sh\n"
              b"short:x:%d:100\n") % (
        uid, os.fsencode(tmp_path / "joe"), uid, os.fsencode(tmp_path / "joe"),
        uid, os.fsencode(tmp_path / "alias"), other, os.fsencode(tmp_path / "bob"),
        uid, os.fsencode(tmp_path / "nohome"), uid)
    return tmp_path, passwd


def test_pw2uDefault(root, homes):
    """qmail-pw2u: skips root, uppercase, foreign homes, missing homes; alias catch-all; dot line."""
    base, passwd = homes
    uid = UID
    result = run(["pw2u", "--root", str(root)], passwd)
    assert result.returncode == 0, result.stderr
    j, a = os.fsencode(base / "joe"), os.fsencode(base / "alias")
    assert result.stdout == (
        b"=joe:joe:%d:100:%s:::\n+joe-:joe:%d:100:%s:-::\n" % (uid, j, uid, j)
        + b"+:alias:%d:200:%s:-::\n=alias:alias:%d:200:%s:::\n+alias-:alias:%d:200:%s:-::\n"
        % (uid, a, uid, a, uid, a) + b".\n")


def test_pw2uOptionsAndFiles(root, homes):
    """-u keeps uppercase, -C drops + lines, -/ dash; mailnames, subusers, append, exclude."""
    base, passwd = homes
    uid = UID
    (root / "users" / "mailnames").write_bytes(b"joe:jj:joseph\n")
    (root / "users" / "exclude").write_bytes(b"upper\n")
    (root / "users" / "subusers").write_bytes(b"sub:joe:pre:\n")
    (root / "users" / "append").write_bytes(b"=extra:x:1:1:/x:::\n")
    result = run(["pw2u", "--root", str(root), "-u", "-/"], passwd)
    j = os.fsencode(base / "joe")
    out = result.stdout
    assert b"=jj:joe:%d:100:%s:::\n+jj-:joe:%d:100:%s:-/::\n=joseph:" % (uid, j, uid, j) in out
    assert b"Upper" not in out
    assert b"=sub:joe:%d:100:%s:-/:pre:\n+sub-:joe:%d:100:%s:-/:pre-:\n" % (uid, j, uid, j) in out
    assert out.endswith(b"=extra:x:1:1:/x:::\n.\n")
    result = run(["pw2u", "--root", str(root), "-C"], passwd)
    assert b"+jj-" not in result.stdout and b"+:alias:" in result.stdout


def test_pw2uErrors(root, homes):
    """No alias user, an unknown subuser owner, or -h with a missing home: fatal, 111."""
    base, passwd = homes
    noAlias = b"\n".join(l for l in passwd.split(b"\n") if not l.startswith(b"alias"))
    result = run(["pw2u", "--root", str(root)], noAlias)
    assert (result.returncode, result.stderr) == (111, b"qmail-pw2u: fatal: unable to find alias user\n")
    result = run(["pw2u", "--root", str(root), "-h"], passwd)
    assert result.returncode == 111 and b"unable to stat" in result.stderr
    (root / "users" / "subusers").write_bytes(b"sub:nobody:pre:\n")
    result = run(["pw2u", "--root", str(root)], passwd)
    assert result.stderr == b"qmail-pw2u: fatal: unable to find nobody user for subuser\n"
    assert run(["pw2u", "--root", str(root), "-x"], passwd).returncode == 100


LINES = {"UFLINE": "From s Thu Nov 21 19:26:00 2024\n", "RPLINE": "Return-Path: <s>\n",
         "DTLINE": "Delivered-To: joe@h\n"}


def test_prelineFeedsLines():
    """preline gives the command UFLINE, RPLINE, DTLINE, then stdin; -d/-D toggle."""
    result = run(["preline", "cat"], b"body\n", LINES)
    assert result.stdout == b"From s Thu Nov 21 19:26:00 2024\nReturn-Path: <s>\nDelivered-To: joe@h\nbody\n"
    result = run(["preline", "-fd", "-D", "cat"], b"b", LINES)
    assert result.stdout == b"Return-Path: <s>\nDelivered-To: joe@h\nb"


def test_prelineExitAndUsage():
    """preline exits with the command's status; without the env or a command it is usage (100)."""
    assert run(["preline", "sh", "-c", "cat >/dev/null; exit 99"], b"x", LINES).returncode == 99
    result = run(["preline", "cat"], b"x")
    assert (result.returncode, result.stderr) == (100, b"preline: usage: preline cmd [ arg ... ]\n")
    assert run(["preline"], b"", LINES).returncode == 100
    result = run(["preline", "/nonexistent/prog"], b"", LINES)
    assert result.returncode == 100 and result.stderr.startswith(b"preline: fatal: unable to run")


def test_prelineGetoptAsQmail():
    """djb's getopt: an unknown letter is 'preline: illegal option -- x' before the usage (100); any word starting -- ends the options."""
    usage = b"preline: usage: preline cmd [ arg ... ]\n"
    for args, letter in ((["-x", "cat"], b"x"), (["-fx", "cat"], b"x"), (["-:", "cat"], b":")):
        result = run(["preline"] + args, b"", LINES)
        assert (result.returncode, result.stderr) == (
            100, b"preline: illegal option -- " + letter + b"\n" + usage), args
    result = run(["preline", "-x"], b"")
    assert (result.returncode, result.stderr) == (100, usage)
    result = run(["preline", "-f", "--x", "cat"], b"body\n", LINES)
    assert (result.returncode, result.stdout) == (0, b"Return-Path: <s>\nDelivered-To: joe@h\nbody\n")


def test_localDescribe(tmp_path):
    """C{qmailtx local -n} prints one line per instruction and the did line, delivering nothing."""
    home = tmp_path / "h"
    home.mkdir(mode=0o755)
    (home / ".qmail-x").write_bytes(b"./Maildir/\n/var/mail/x\n|prog a\n&fw@x\nplain@y\n")
    result = run(["local", "-n", "joe", str(home), "joe-x", "-", "x", "h", "s@x", "./Mailbox"])
    assert result.returncode == 0
    assert result.stdout == (b"maildir ./Maildir/\nmbox /var/mail/x\nprogram prog a\n"
                             b"forward fw@x\nforward plain@y\ndid 2+2+1\n")
    assert sorted(os.listdir(home)) == [".qmail-x"]


def test_localDescribeStickyOnlyWarns(tmp_path):
    """With -n a sticky home is only a warning."""
    home = tmp_path / "h"
    home.mkdir()
    os.chmod(home, 0o1755)
    result = run(["local", "-n", "joe", str(home), "joe", "", "", "h", "s@x", "./Mailbox"])
    assert result.stdout == b"Warning: home directory is sticky.\nmbox ./Mailbox\ndid 1+0+0\n"


def test_localDelivers(tmp_path):
    """C{qmailtx local} delivers the message on stdin and exits 0 / 100 / 111."""
    home = tmp_path / "h"
    home.mkdir(mode=0o755)
    mess = tmp_path / "m"
    mess.write_bytes(b"Subject: x\n\nbody\n")
    with open(mess, "rb") as f:
        result = subprocess.run(
            [sys.executable, "-m", "qmailtx.scripts.main", "local", "joe", str(home), "joe", "",
             "", "h", "s@x", "./Mailbox"], stdin=f, capture_output=True,
            env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert (result.returncode, result.stdout) == (0, b"did 1+0+0\n")
    assert (home / "Mailbox").read_bytes().endswith(b"Delivered-To: joe@h\nSubject: x\n\nbody\n\n")
    with open(mess, "rb") as f:
        result = subprocess.run(
            [sys.executable, "-m", "qmailtx.scripts.main", "local", "joe", str(home), "joe-q",
             "-", "q", "h", "s@x", "./Mailbox"], stdin=f, capture_output=True,
            env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert (result.returncode, result.stdout) == (100, b"Sorry, no mailbox here by that name. (#5.1.1)\n")
    assert run(["local", "joe", "rel", "joe", "", "", "h", "s", "x"]).returncode == 100
    result = run(["local", "joe", str(home), "joe", "", "", "h", "s@x", "./Mailbox"], b"pipe")
    assert (result.returncode, result.stdout) == (111, b"Unable to rewind message. (#4.3.0)\n")


def dotqm(home, rc, *flags):
    return run(["dotqm", *flags, str(rc)], env={"HOME": str(home)})


def test_dotqmWritesAndRemoves(tmp_path):
    """dotqm writes one marked 0600 file per address, multi-line in order, and removes dropped ones."""
    home = tmp_path / "h"
    home.mkdir(mode=0o755)
    (home / "inc").write_bytes(b"list |preline qmlock list handler\n")
    rc = home / ".dotqmrc"
    rc.write_bytes(b"# mine\nfoo ./Maildir/\nfoo &bob@x\nWWW.Ex@host &web@x\ndefault ./Mailbox\n"
                   b"#include <inc>\n")
    result = dotqm(home, rc, "-v")
    assert result.returncode == 0, result.stderr
    names = sorted(n for n in os.listdir(home) if n.startswith(".qmail"))
    assert names == [".qmail-default", ".qmail-foo", ".qmail-list", ".qmail-www:ex"]
    text = (home / ".qmail-foo").read_bytes()
    assert text.endswith(b"\n./Maildir/\n&bob@x\n") and text.startswith(b"#")
    assert oct(os.stat(home / ".qmail-foo").st_mode & 0o777) == "0o600"
    assert os.stat(home).st_mode & 0o7777 == 0o755
    rc.write_bytes(b"foo ./Maildir/\n")
    assert dotqm(home, rc).returncode == 0
    assert sorted(n for n in os.listdir(home) if n.startswith(".qmail")) == [".qmail-foo"]


def test_dotqmNeverTouchesHandWritten(tmp_path):
    """A hand-written .qmail file is neither replaced nor removed."""
    home = tmp_path / "h"
    home.mkdir(mode=0o755)
    (home / ".qmail-foo").write_bytes(b"&mine@x\n")
    (home / ".qmail-bar").write_bytes(b"&mine@x\n")
    rc = home / "rc"
    rc.write_bytes(b"foo ./Maildir/\n")
    result = dotqm(home, rc)
    assert result.returncode == 100 and b"not written by dotqm" in result.stderr
    rc.write_bytes(b"baz ./Maildir/\n")
    assert dotqm(home, rc).returncode == 0
    assert (home / ".qmail-foo").read_bytes() == (home / ".qmail-bar").read_bytes() == b"&mine@x\n"


def test_dotqmErrors(tmp_path):
    """A line without action, or a missing file, is fatal."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "rc").write_bytes(b"lonely\n")
    assert dotqm(home, home / "rc").returncode == 100
    assert dotqm(home, home / "missing").returncode == 111


def test_qmlockSerializes(tmp_path):
    """Two qmlock runs of one NAME never overlap; the command's status is qmlock's."""
    log = tmp_path / "log"
    script = "echo start >> %s; sleep 0.5; echo end >> %s; exit 7" % (log, log)
    procs = [subprocess.Popen([sys.executable, "-m", "qmailtx.scripts.main", "qmlock", "-r", "0.1",
                               "list", "sh", "-c", script], cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)})
             for _ in range(2)]
    assert [p.wait(30) for p in procs] == [7, 7]
    assert log.read_text() == "start\nend\nstart\nend\n"
    assert not (tmp_path / ".qmlock" / "list").exists()


def test_qmlockTakesOverStaleLock(tmp_path):
    """A lock older than -t, or held by a dead pid, is taken over."""
    (tmp_path / ".qmlock").mkdir()
    lock = tmp_path / ".qmlock" / "list"
    lock.write_bytes(b"1 0\n")
    os.utime(lock, (time.time() - 100, time.time() - 100))
    result = run(["qmlock", "-v", "-t", "10", "list", "true"], cwd=tmp_path)
    assert result.returncode == 0 and b"taking over stale lock" in result.stderr
    lock.write_bytes(b"999999999 0\n")
    assert run(["qmlock", "list", "true"], cwd=tmp_path).returncode == 0


def test_qmlockUsage(tmp_path):
    """Missing NAME or COMMAND is usage (100)."""
    assert run(["qmlock", "list"], cwd=tmp_path).returncode == 100
    assert run(["qmlock", "-r", "x", "list", "true"], cwd=tmp_path).returncode == 100


def test_qmlockKeepsLockWhileCommandRuns(tmp_path):
    """A COMMAND running longer than -t keeps its lock: the holder renews it, so a second
    qmlock waits instead of taking it over."""
    log = tmp_path / "log"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}

    def qmlock(seconds):
        script = "echo start >> %s; sleep %s; echo end >> %s" % (log, seconds, log)
        return subprocess.Popen([sys.executable, "-m", "qmailtx.scripts.main", "qmlock", "-t", "1",
                                 "-r", "0.1", "list", "sh", "-c", script], cwd=tmp_path, env=env)

    first = qmlock(3)
    deadline = time.time() + 20
    while not log.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    second = qmlock(0)
    assert [first.wait(30), second.wait(30)] == [0, 0]
    assert log.read_text() == "start\nend\nstart\nend\n"


def test_dotqmOwnAddressIsDotQmail(tmp_path):
    """The login itself, bare or as a full address, is ~/.qmail (qmail-local's empty
    extension), removed again when its lines go; a comment starting '#includes' is a comment."""
    login = pwd.getpwuid(os.getuid()).pw_name
    home = tmp_path / "h"
    home.mkdir(mode=0o755)
    rc = home / ".dotqmrc"
    rc.write_bytes(b"#includes follow\n%s@example.org ./Maildir/\n%s &bob@x\n%s-list ./list/\n"
                   % ((login.upper().encode(),) + (login.encode(),) * 2))
    result = dotqm(home, rc)
    assert result.returncode == 0, result.stderr
    assert sorted(n for n in os.listdir(home) if n.startswith(".qmail")) == [".qmail", ".qmail-list"]
    assert (home / ".qmail").read_bytes().endswith(b"\n./Maildir/\n&bob@x\n")
    rc.write_bytes(b"%s-list ./list/\n" % login.encode())
    assert dotqm(home, rc).returncode == 0
    assert sorted(n for n in os.listdir(home) if n.startswith(".qmail")) == [".qmail-list"]
    rc.write_bytes(b"@example.org ./Maildir/\n")
    assert dotqm(home, rc).returncode == 100


def test_maildirmakeSaysWhatQmailSays(tmp_path):
    """An existing directory: qmail's error_str wording, exit 111; no name: usage, 100."""
    assert run(["maildirmake", "M"], cwd=tmp_path).returncode == 0
    result = run(["maildirmake", "M"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        111, b"maildirmake: fatal: unable to mkdir M: file already exists\n")
    assert run(["maildirmake"], cwd=tmp_path).returncode == 100


def test_maildirmakeIgnoresExtraArguments(tmp_path):
    """Only the first name is made; further arguments are ignored, as qmail's maildirmake does."""
    result = run(["maildirmake", "A", "B"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert sorted(os.listdir(tmp_path / "A")) == ["cur", "new", "tmp"]
    assert not (tmp_path / "B").exists()


def test_maildirmakeSetsUmask(tmp_path):
    """maildirmake sets umask 077 itself: under umask 0277 every directory is still mode 0700, and an unprivileged caller can make it."""
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "qmailtx.scripts.main", "maildirmake"]
    result = subprocess.run(command + ["M"], cwd=tmp_path, env=full, umask=0o277,
                            capture_output=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, b"")
    for sub in ("", "tmp", "new", "cur"):
        assert (tmp_path / "M" / sub).stat().st_mode & 0o7777 == 0o700, sub
    if os.getuid() != 0:
        return
    top = tempfile.mkdtemp(prefix="qmailtx-maildirmake-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        os.chown(top, 65534, 65534)
        assert maildirmakeAs(65534, top, 0o277, "N2") == 0
        assert sorted(os.listdir(os.path.join(top, "N2"))) == ["cur", "new", "tmp"]
        assert os.stat(os.path.join(top, "N2")).st_mode & 0o7777 == 0o700
    finally:
        shutil.rmtree(top)


def maildirmakeAs(uid, cwd, umask, name):
    """Fork, set C{umask}, drop to C{uid} in C{cwd} (the venv's python may not be executable by it), run maildirmake's main()."""
    from qmailtx.scripts import maildirmake
    pid = os.fork()
    if pid == 0:
        try:
            os.umask(umask)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.chdir(cwd)
            os._exit(maildirmake.main(["maildirmake", name]))
        except BaseException:
            os._exit(200)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.getuid() != 0, reason="the warning is for root")
def test_passwdWarnsRootOfAnEntryWithoutIds(tmp_path):
    """
    Run as root, 'passwd set' without UID GID warns that a root daemon refuses that login
    (it never serves mail as uid 0), since the checker's refusal then reads exactly like a
    wrong password; the usage says where the password comes from.
    """
    import io

    from qmailtx.scripts import passwd

    err = io.StringIO()
    code = passwd.main(["passwd", str(tmp_path / "pw"), "set", "joe", "/home/joe"],
                       stdin=io.BytesIO(b"s3cret\n"), stderr=err)
    assert code == 0
    assert err.getvalue() == ("passwd: warning: joe has no UID GID: a daemon run as root "
                              "refuses this login\n")
    err = io.StringIO()
    assert passwd.main(["passwd", str(tmp_path / "pw"), "set", "joe", "/home/joe", "65534",
                        "65534"], stdin=io.BytesIO(b"s3cret\n"), stderr=err) == 0
    assert err.getvalue() == ""
    assert "password on stdin" in passwd.USAGE
