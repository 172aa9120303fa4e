"""The command-line tools: qmailtx queue (qmail-queue), qstat, qread, showctl."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from qmailtx.queuelayout import createLayout

TOOL = [sys.executable, "-m", "qmailtx.scripts.main"]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    createLayout(str(r / "queue"))
    return str(r)


def runQueue(message, envelope, cwd, args=()):
    """Run `qmailtx queue` with the message on fd 0 and the envelope on fd 1."""
    r, w = os.pipe()
    p = subprocess.Popen(TOOL + ["queue"] + list(args), stdin=subprocess.PIPE, stdout=r,
                         stderr=subprocess.PIPE, cwd=cwd)
    os.close(r)
    p.stdin.write(message)
    p.stdin.close()
    try:
        os.write(w, envelope)
    except BrokenPipeError:
        pass
    os.close(w)
    err = p.stderr.read()
    p.wait(30)
    return p.returncode, err


def files(root, name):
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, "queue", name)):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def test_queueCli(root):
    """Message on fd 0, envelope on fd 1, cwd = root: queued with 'invoked by uid <uid>', exit 0, silent."""
    code, err = runQueue(b"Subject: x\n\nbody\n", b"Fa@x\0Tb@y\0Tc@z\0\0", root)
    assert (code, err) == (0, b"")
    [mess] = files(root, "mess")
    [todo] = files(root, "todo")
    msgid = int(os.path.basename(mess))
    assert os.stat(mess).st_ino == msgid and os.path.basename(todo) == str(msgid)
    with open(mess, "rb") as f:
        first, rest = f.read().split(b"\n", 1)
    assert first.startswith(b"Received: (qmail ") and b" invoked by uid %d); " % os.getuid() in first
    assert rest == b"Subject: x\n\nbody\n"
    qp = first.split()[2]
    with open(todo, "rb") as f:
        assert f.read() == b"u%d\0p%s\0Fa@x\0Tb@y\0Tc@z\0" % (os.getuid(), qp)
    assert files(root, "pid") == []


def test_queueCliRootOption(root, tmp_path):
    """--root DIR replaces the working directory as the qmail root."""
    code, _ = runQueue(b"m\n", b"F\0Tr@y\0\0", str(tmp_path), ["--root", root])
    assert code == 0 and len(files(root, "todo")) == 1


@pytest.mark.parametrize("envelope,code", [
    (b"Fa@x\0Tb@y\0", 54),
    (b"", 54),
    (b"Xa@x\0\0", 91),
    (b"Fa@x\0Qb\0\0", 91),
    (b"Fa@x\0T" + b"b" * 1003 + b"\0\0", 11),
])
def test_queueCliEnvelopeErrors(root, envelope, code):
    """A cut envelope exits 54, a bad record letter 91, an address over 1002 bytes 11; nothing is left queued."""
    assert runQueue(b"m\n", envelope, root)[0] == code
    assert files(root, "mess") == [] and files(root, "intd") == [] and files(root, "todo") == []


def test_queueCliNoRoot(tmp_path):
    """A missing root is exit 61, a root without queue/ exit 62 (qmail's home-directory codes)."""
    assert runQueue(b"m", b"F\0\0", str(tmp_path), ["--root", str(tmp_path / "none")])[0] == 61
    assert runQueue(b"m", b"F\0\0", str(tmp_path))[0] == 62


def enqueueAs(uid, root, message, envelope):
    """Fork, drop to C{uid} (the venv's python may not be executable by it), run the tool's enqueue()."""
    from qmailtx.scripts.queue import enqueue
    mr, mw = os.pipe()
    er, ew = os.pipe()
    os.write(mw, message)
    os.write(ew, envelope)
    os.close(mw)
    os.close(ew)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os._exit(enqueue(root, mr, er))
        except BaseException:
            os._exit(200)
    os.close(mr)
    os.close(er)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to an unprivileged uid")
def test_queueCliUnprivileged(tmp_path):
    """An unprivileged caller gets 62 for a root-owned queue/ it cannot enter, 63 for a pid/ it cannot write, and queues into its own."""
    base = tempfile.mkdtemp()
    try:
        os.chmod(base, 0o755)
        _unprivileged(os.path.join(base, "root"), os.path.join(base, "own"))
    finally:
        shutil.rmtree(base)


def _unprivileged(root, own):
    os.mkdir(root, 0o755)
    createLayout(os.path.join(root, "queue"))
    assert enqueueAs(65534, root, b"m\n", b"F\0Tr\0\0") == 62
    os.chmod(os.path.join(root, "queue"), 0o755)
    assert enqueueAs(65534, root, b"m\n", b"F\0Tr\0\0") == 63
    assert files(root, "mess") == []
    os.mkdir(own, 0o755)
    createLayout(os.path.join(own, "queue"), uid=65534, gid=65534)
    assert enqueueAs(65534, own, b"m\n", b"F\0Tr\0\0") == 0
    [mess] = files(own, "mess")
    with open(mess, "rb") as f:
        assert b"invoked by uid 65534); " in f.readline()


def tool(name, root, env=None):
    p = subprocess.run(TOOL + [name, "--root", root], capture_output=True, env=env)
    return p.returncode, p.stdout


def test_qstat(root):
    """Two lines: files under mess/ and files in todo/."""
    for msg in (b"a", b"b", b"c"):
        assert runQueue(msg, b"F\0Tr\0\0", root)[0] == 0
    todo = files(root, "todo")[0]
    os.unlink(todo)
    assert tool("qstat", root) == (0, b"messages in queue: 3\nmessages in queue but not yet preprocessed: 2\n")


def test_qstatQmailhome(root):
    """Without --root the tools use $QMAILHOME."""
    env = dict(os.environ, QMAILHOME=root)
    p = subprocess.run(TOOL + ["qstat"], capture_output=True, env=env)
    assert p.stdout == b"messages in queue: 0\nmessages in queue but not yet preprocessed: 0\n"


def test_inspectionToolsIgnoreArguments(root):
    """qstat, qread and showctl ignore every argument but --root, as qmail's take none: same output, exit 0."""
    preprocessed(root, 47, b"a@b", remote=[b"Tc@d"])
    os.mkdir(os.path.join(root, "control"))
    for name in ("qstat", "qread", "showctl"):
        plain = tool(name, root)
        assert plain[0] == 0 and plain[1]
        for args in (["--root", root, "-v"], ["x", "--root", root, "-bp"], ["--root", root, "--", "-z"]):
            p = subprocess.run(TOOL + [name] + args, capture_output=True)
            assert (p.returncode, p.stdout, p.stderr) == (0, plain[1], b""), (name, args)
    env = dict(os.environ, QMAILHOME=root)
    p = subprocess.run(TOOL + ["qstat", "-s"], capture_output=True, env=env)
    assert (p.returncode, p.stdout) == (0, tool("qstat", root)[1])


def preprocessed(root, msgid, sender, local=(), remote=(), bounce=False, mtime=1732217160, body=b"x" * 10):
    """Lay out one message the way qmail-send leaves it after preprocessing."""
    q = os.path.join(root, "queue")
    sub = str(msgid % 23)
    with open(os.path.join(q, "mess", sub, str(msgid)), "wb") as f:
        f.write(body)
    info = os.path.join(q, "info", sub, str(msgid))
    with open(info, "wb") as f:
        f.write(b"F" + sender + b"\0")
    os.utime(info, (mtime, mtime))
    for channel, records in (("local", local), ("remote", remote)):
        if records:
            with open(os.path.join(q, channel, sub, str(msgid)), "wb") as f:
                f.write(b"".join(r + b"\0" for r in records))
    if bounce:
        open(os.path.join(q, "bounce", str(msgid)), "wb").close()


def test_qread(root):
    """qmail-qread's lines: date GMT  #id  size  <sender> [ bouncing], then local before remote, '  done' for D records, bytes outside 32-126 as _."""
    preprocessed(root, 12345, b"joe@example.com", local=[b"Tbox@here", b"Dold@here"],
                 remote=[b"Tbob@example.org"], bounce=True, body=b"y" * 1234)
    preprocessed(root, 47, b"", remote=[b"Tb\x01d@x"], mtime=1704070805)
    code, out = tool("qread", root)
    assert code == 0
    assert out == (
        b"1 Jan 2024 01:00:05 GMT  #47  10  <> \n"
        b"\tremote\tb_d@x\n"
        b"21 Nov 2024 19:26:00 GMT  #12345  1234  <joe@example.com>  bouncing\n"
        b"\tlocal\tbox@here\n"
        b"  done\tlocal\told@here\n"
        b"\tremote\tbob@example.org\n")


def test_qreadTrouble(root):
    """An info file whose mess file is gone gives qmail's 'warning: trouble with #id: ...' line."""
    preprocessed(root, 5, b"a@b", local=[b"Tc@d"])
    os.unlink(os.path.join(root, "queue", "mess", "5", "5"))
    code, out = tool("qread", root)
    assert (code, out) == (0, b"warning: trouble with #5: file does not exist\n")


def qreadAs(uid, root):
    """qread's main() as C{uid}: its exit code and stdout."""
    from qmailtx.scripts import qread
    from tests.asuser import mainAs

    code, out, _ = mainAs(uid, qread.main, ["qread", "--root", root])
    return code, out


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to an unprivileged uid")
def test_qreadCannotEnterQueue():
    """A caller who cannot enter the root or queue/ gets qmail-qread's 'fatal: unable to chdir: access denied' on stdout, exit 111."""
    base = tempfile.mkdtemp()
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "root")
        os.mkdir(root, 0o755)
        createLayout(os.path.join(root, "queue"))
        os.chmod(os.path.join(root, "queue"), 0o700)
        assert qreadAs(65534, root) == (111, b"fatal: unable to chdir: access denied\n")
        os.chmod(os.path.join(root, "queue"), 0o755)
        os.chmod(root, 0o700)
        assert qreadAs(65534, root) == (111, b"fatal: unable to chdir: access denied\n")
        os.chmod(root, 0o755)
        assert qreadAs(65534, root) == (111, b"fatal: unable to opendir info/0: access denied\n")
        assert qreadAs(65534, os.path.join(base, "none")) == (
            111, b"fatal: unable to chdir: file does not exist\n")
    finally:
        shutil.rmtree(base)


def showctl(root):
    code, out = tool("showctl", str(root))
    assert code == 0
    return out.decode()


def test_showctlDefaults(qmailRoot):
    """Header constants, (Default.) markers with qmail's defaults, values read, and me's value used as default."""
    out = showctl(qmailRoot)
    assert out.startswith("qmail home directory: %s.\nuser-ext delimiter: -.\n"
                          "paternalism (in decimal): 2.\nsilent concurrency limit: 120.\n"
                          "subdirectory split: 23.\nuser ids: " % qmailRoot)
    assert "\nconcurrencylocal: (Default.) Local concurrency is 10.\n" in out
    assert "\nqueuelifetime: (Default.) Message lifetime in the queue is 604800 seconds.\n" in out
    assert "\nbouncehost: (Default.) Bounce host name is mx.example.com.\n" in out
    assert "\nme: My name is mx.example.com.\n" in out
    assert "\nlocals: \nMessages for mx.example.com are delivered locally.\n" in out
    assert "\ndefaultdelivery: I have no idea what this file does.\n" in out


def test_showctlValues(qmailRoot):
    """Set values replace the defaults; rcpthosts absent gives 'any recipient'; unreadable files say Oops; unknown files 'no idea'."""
    control = qmailRoot / "control"
    (control / "concurrencyremote").write_bytes(b"55\n")
    (control / "databytes").write_bytes(b"abc\n")
    (control / "rcpthosts").unlink()
    (control / "morercpthosts").write_bytes(b"x.org\n")
    (control / "badmailfrom").write_bytes(b"# c\nspam@x\n\n@bad.org\n")
    (control / "virtualdomains").mkdir()
    (control / "weird").write_bytes(b"")
    out = showctl(qmailRoot)
    assert "\nconcurrencyremote: Remote concurrency is 55.\n" in out
    assert "\ndatabytes: (Default.) SMTP DATA limit is 0 bytes.\n" in out
    assert "\nrcpthosts: (Default.) SMTP clients may send messages to any recipient.\n" in out
    assert "\nmorercpthosts: \nNo rcpthosts; doesn't matter that morercpthosts has x.org.\n" in out
    assert "\nmorercpthosts.cdb: Oops! morercpthosts exists but morercpthosts.cdb doesn't.\n" in out
    assert "\nbadmailfrom: \nspam@x not accepted in MAIL FROM.\n@bad.org not accepted in MAIL FROM.\n" in out
    assert "\nvirtualdomains: Oops! Trouble reading this file.\n" in out
    assert "\nweird: I have no idea what this file does.\n" in out
    assert "concurrencyremote: I have no idea" not in out


def test_showctlCdbStale(qmailRoot):
    """morercpthosts.cdb older than morercpthosts is reported; newer is 'hopefully up to date'."""
    control = qmailRoot / "control"
    (control / "morercpthosts").write_bytes(b"x.org\n")
    (control / "morercpthosts.cdb").write_bytes(b"")
    os.utime(control / "morercpthosts.cdb", (1000, 1000))
    assert "\nmorercpthosts.cdb: Oops! morercpthosts.cdb is older than morercpthosts.\n" in showctl(qmailRoot)
    os.utime(control / "morercpthosts.cdb", None)
    os.utime(control / "morercpthosts", (1000, 1000))
    out = showctl(qmailRoot)
    assert "\nmorercpthosts.cdb: Modified recently enough; hopefully up to date.\n" in out
    assert "\nmorercpthosts: \nSMTP clients may send messages to recipients at x.org.\n" in out


def test_showctlUnreadableRcpthosts(qmailRoot):
    """An unreadable rcpthosts counts as present, as qmail's do_lst returns -1 (true): morercpthosts gets the 'recipients at' wording."""
    control = qmailRoot / "control"
    (control / "rcpthosts").unlink()
    (control / "rcpthosts").mkdir()
    (control / "morercpthosts").write_bytes(b"x.org\n")
    out = showctl(qmailRoot)
    assert "\nrcpthosts: Oops! Trouble reading this file.\n" in out
    assert "\nmorercpthosts: \nSMTP clients may send messages to recipients at x.org.\n" in out
    (control / "morercpthosts").unlink()
    assert "\nmorercpthosts: (Default.) No effect.\n" in showctl(qmailRoot)
