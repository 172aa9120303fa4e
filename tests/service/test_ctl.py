"""C{qmailtx ctl} against a live daemon: stat, pause/cont over the socket, signals, cdb."""

import os
import subprocess
import sys
import time

import pytest

from tests.service.daemon import REPO


def ctl(root, *words):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", "ctl", "--root",
                           str(root), *words], capture_output=True, text=True, env=env)


def waitLog(daemon, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged")


def test_statPauseContDoqueue(daemon, qmailRoot):
    """stat finds the daemon by its pid file; pause/cont answer over the socket; doqueue signals."""
    out = ctl(qmailRoot, "stat")
    assert out.returncode == 0, out.stderr
    assert f"qmailtx: up (pid {daemon.process.pid}) qmail-send: running" in out.stdout
    assert "messages in queue: 0\n" in out.stdout
    assert ctl(qmailRoot, "pause").stdout == "ok: deliveries paused\n"
    assert "qmail-send: paused" in ctl(qmailRoot, "stat").stdout
    assert ctl(qmailRoot, "cont").stdout == "ok: deliveries continue\n"
    out = ctl(qmailRoot, "doqueue")
    assert out.stdout == f"Sending ALRM signal to qmailtx (pid {daemon.process.pid}).\n"
    (qmailRoot / "control" / "locals").write_bytes(b"[unreadable\n")
    os.chmod(qmailRoot / "control" / "locals", 0o644)
    assert ctl(qmailRoot, "reload").returncode == 0
    time.sleep(0.3)
    assert daemon.process.poll() is None


def test_statWithoutDaemon(qmailRoot):
    """stat says down (exit 1) when no daemon runs, and still prints qmail-qstat's lines."""
    out = ctl(qmailRoot, "stat")
    assert out.returncode == 1
    assert out.stdout.startswith("qmailtx: down")
    assert "messages in queue but not yet preprocessed: 0\n" in out.stdout


def test_cdb(qmailRoot):
    """cdb compiles rules/NAME to NAME.cdb and control/morercpthosts to its cdb."""
    (qmailRoot / "control" / "morercpthosts").write_bytes(b"Extra.Example\n")
    out = ctl(qmailRoot, "cdb")
    assert out.returncode == 0, out.stdout
    assert (qmailRoot / "rules" / "smtp.cdb").exists()
    from qmailtx.cdbfile import CdbFile
    assert CdbFile.fromPath(str(qmailRoot / "control" / "morercpthosts.cdb")).get(
        b"extra.example") == b""


def refusedStartLog(daemon):
    """Start C{daemon}, which must refuse: its exit status is 111; returns its log."""
    daemon.start(wait=False)
    try:
        assert daemon.process.wait(20) == 111
    finally:
        daemon.kill()
    return daemon.log()


def test_secondDaemonRefuses(daemon, qmailRoot):
    """
    A second daemon on a root whose qmail-send runs exits 111 with qmail-send's alert,
    without listening and without touching the first one's pid file, ctl socket or
    queue socket: ctl still steers the first daemon afterwards.
    """
    from tests.service.daemon import Daemon

    second = Daemon(qmailRoot)
    second.logPath = str(qmailRoot) + ".second.log"
    log = refusedStartLog(second)
    assert "alert: cannot start: qmail-send is already running" in log
    assert "listening on" not in log and "Traceback" not in log
    assert ctl(qmailRoot, "pause").stdout == "ok: deliveries paused\n"
    out = ctl(qmailRoot, "stat")
    assert f"qmailtx: up (pid {daemon.process.pid})" in out.stdout
    assert os.path.exists(qmailRoot / "public" / "qmail-queue")
    assert daemon.process.poll() is None


def test_portInUseRefuses(daemon, tmp_path):
    """A listener that cannot bind ends the start: exit 111, the reason logged, nothing
    left running without its port."""
    from qmailtx.rootdir import createRoot
    from tests.service.daemon import Daemon

    createRoot(str(tmp_path / "other"), "other.example")
    other = Daemon(tmp_path / "other")
    other.ports["smtp"] = daemon.port
    log = refusedStartLog(other)
    assert f"alert: cannot start: unable to listen for smtp on tcp:{daemon.port}" in log
    assert "qmailtx: cannot start: unable to listen" in log and "Traceback" not in log
    assert not os.path.exists(tmp_path / "other" / "run" / "qmailtx.pid")


@pytest.mark.parametrize("breakQueue, reason", [
    (lambda queue: (os.rmdir(queue / "todo"), (queue / "todo").write_bytes(b"")),
     "unable to read the queue: todo/: not a directory"),
    (lambda queue: os.rename(queue / "lock", queue / "lock.away"), "unable to open mutex"),
], ids=["todo-a-file", "no-lock-dir"])
def test_unusableQueueRefusesBeforeListening(qmailRoot, breakQueue, reason):
    """A queue qmail-send cannot load or lock ends the start as controls it cannot read
    do: exit 111, qmail-send's alert once, before any listener takes a connection."""
    from tests.service.daemon import Daemon

    breakQueue(qmailRoot / "queue")
    log = refusedStartLog(Daemon(qmailRoot))
    assert log.count("alert: cannot start: ") == 1 and f"alert: cannot start: {reason}" in log
    assert "listening on" not in log and "status: exiting" not in log and "Traceback" not in log


def test_stalePidFileIsNotSignalled(qmailRoot):
    """A pid file left by a daemon that died, naming a process that reused the number, is
    not trusted: ctl says there is no daemon and signals nothing."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        run = qmailRoot / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        (run / "qmailtx.pid").write_text(f"{victim.pid}\n")
        out = ctl(qmailRoot, "doqueue")
        assert out.returncode == 111
        assert out.stderr == f"ctl: fatal: no running daemon for {qmailRoot}\n"
        assert ctl(qmailRoot, "reload").returncode == 111
        out = ctl(qmailRoot, "stat")
        assert out.returncode == 1 and out.stdout.startswith("qmailtx: down")
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_refusedStartAsDaemon(daemon, tmp_path):
    """Daemonizing (no -n), a start that is refused reaches the waiting parent, which says
    so and exits, rather than waiting for ever; twistd's pid file is removed."""
    from qmailtx.rootdir import createRoot
    from tests.service.daemon import twistdCommand

    createRoot(str(tmp_path / "other"), "other.example")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    result = subprocess.run(
        twistdCommand() + [f"--pidfile={pidfile}", f"--logfile={logfile}", "qmail", "--root",
                           str(tmp_path / "other"), "--smtp",
                           f"tcp:{daemon.port}:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode != 0
    assert "unable to listen for smtp" in result.stdout + result.stderr
    assert not pidfile.exists()


@pytest.mark.parametrize("where", ["named", "default"])
def test_unusableRulesRefuseTheStart(qmailRoot, tmp_path, where):
    """
    Rules that cannot be used at start (a line tcprules would refuse), named with --rules
    or found in rules/, end the start as other start-up trouble does: exit 111 with one
    alert naming the file and the line, no traceback, nothing listening.
    """
    from tests.service.daemon import Daemon

    bad = tmp_path / "smtp.rules" if where == "named" else qmailRoot / "rules" / "smtp"
    for old in (qmailRoot / "rules").glob("smtp*"):
        old.unlink()
    bad.write_text("127.0.0.1:Allow\n")
    extra = ["--rules", f"smtp={bad}"] if where == "named" else []
    log = refusedStartLog(Daemon(qmailRoot, extra=extra))
    assert log.count("alert: cannot start: ") == 1, log
    assert (f"alert: cannot start: unable to use the smtp rules {bad}: "
            "unable to parse this line: 127.0.0.1:Allow") in log
    assert "listening on" not in log and "Traceback" not in log


def test_pop3sWithoutCertificateRefusesTheStart(qmailRoot):
    """--pop3s with no control/servercert.pem cannot serve anyone: exit 111 with one alert,
    not a Python traceback and exit 1."""
    from tests.service.daemon import Daemon

    (qmailRoot / "control" / "servercert.pem").unlink()
    log = refusedStartLog(Daemon(qmailRoot, listeners=("smtp", "pop3s"),
                                 extra=["--checkpassword", "/bin/false"]))
    assert log.count("alert: cannot start: ") == 1, log
    assert "alert: cannot start: --pop3s needs control/servercert.pem" in log
    assert "Traceback" not in log and "listening on" not in log


def test_startWarnsOfWhatCannotWork(qmailRoot, tmp_path):
    """
    Listeners that start but could serve nobody say so at start, not only when the first
    client fails: SMTPS without a certificate, POP3 that requires TLS without one, a
    checkpassword program that cannot be found on the PATH it is run with, and a named
    rules file that does not exist (tcpserver -x drops every client then).
    """
    from tests.service.daemon import Daemon

    (qmailRoot / "control" / "servercert.pem").unlink()
    missing = tmp_path / "rules.smtps"
    with Daemon(qmailRoot, listeners=("smtp", "smtps", "pop3"),
                extra=["--pop3-tls-required", "--checkpassword", "no-such-checker x",
                       "--rules", f"smtps={missing}"]) as d:
        log = d.log()
    assert (f"warning: smtps: {missing} does not exist: every connection is dropped until "
            "it does") in log
    assert ("warning: smtps: no control/servercert.pem: every connection is dropped "
            "until it exists") in log
    assert ("warning: pop3: --pop3-tls-required without control/servercert.pem: nobody can "
            "log in until it exists") in log
    assert ("warning: checkpassword: no-such-checker not found in "
            "/usr/local/bin:/usr/bin:/bin: every SMTP AUTH and POP3 login will fail") in log


def ctlAs(uid, root, *words):
    """C{qmailtx ctl} as C{uid}: (exit code, stdout, stderr) as text."""
    from qmailtx.scripts import ctl as ctlTool
    from tests.asuser import mainAs

    code, out, err = mainAs(uid, ctlTool.main, ["ctl", "--root", str(root), *words])
    return code, out.decode(), err.decode()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to an unprivileged uid")
@pytest.mark.parametrize("verb", ["stat", "doqueue", "pause", "--help"])
def test_ctlWithoutAccessSaysSo(daemon, qmailRoot, verb):
    """
    A user who may not read the daemon's run/ (mode 0700) is told so, not that a running
    daemon is down; an unknown word is a usage error before anything is looked at.
    """
    code, out, err = ctlAs(65534, qmailRoot, verb)
    if verb == "--help":
        assert (code, out) == (100, "") and err.startswith("ctl: usage: ")
        return
    assert code == 111 and "down" not in out and "no running daemon" not in err
    assert f"unable to read {qmailRoot}/run/qmailtx.pid: access denied" in err


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to an unprivileged uid")
def test_stalePidOfAnotherUsersProcess(tmp_path):
    """
    A user's own daemon died and its pid now names another user's process: kill(pid, 0)
    fails with EPERM, which is no access error of the caller's; the control socket, which
    does not answer, says there is no daemon.
    """
    import tempfile

    base = tempfile.mkdtemp()
    victim = subprocess.Popen(["sleep", "30"])
    try:
        os.chmod(base, 0o755)
        run = os.path.join(base, "run")
        os.mkdir(run, 0o700)
        with open(os.path.join(run, "qmailtx.pid"), "w") as f:
            f.write(f"{victim.pid}\n")
        for path in (base, run, os.path.join(run, "qmailtx.pid")):
            os.chown(path, 65534, 65534)
        code, out, err = ctlAs(65534, base, "doqueue")
        assert (code, err) == (111, f"ctl: fatal: no running daemon for {base}\n")
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
        import shutil

        shutil.rmtree(base)


def test_unbalancedCheckpasswordQuoteRefusesTheStart(qmailRoot):
    """A --checkpassword that cannot be split like a shell would is a start refusal."""
    from tests.service.daemon import Daemon

    log = refusedStartLog(Daemon(qmailRoot, extra=["--checkpassword", "'/bin/checker"]))
    assert "alert: cannot start: --checkpassword: No closing quotation" in log
    assert "Traceback" not in log
