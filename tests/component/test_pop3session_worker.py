"""The POP3 mailbox worker (qmailtx.scripts.pop3session) as a real process."""

import os
import signal
import subprocess
import sys

from qmailtx import maildir
from qmailtx.scripts import pop3session as wire
from tests.service.pythonpath import environ, requireUserPython

NOBODY = 65534


def test_workerOutlivesGroupSignals(tmp_path):
    """
    SIGINT, SIGTERM and SIGHUP sent to the daemon's process group (Ctrl-C, a supervisor's
    stop) leave the worker answering: killed in the middle of a QUIT's UPDATE it would
    leave deletions undone that its client was about to be told were done.  It ends when
    its input closes.
    """
    md = str(tmp_path / "Maildir")
    maildir.maildirmake(md)
    os.chmod(tmp_path, 0o755)
    asRoot = os.getuid() == 0
    if asRoot:
        for path in [md] + [os.path.join(md, sub) for sub in ("new", "cur", "tmp")]:
            os.chown(path, NOBODY, NOBODY)
    owner = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if asRoot else {}
    python = requireUserPython(NOBODY, NOBODY) if asRoot else sys.executable
    proc = subprocess.Popen([python, "-m", "qmailtx.scripts.pop3session"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=environ(), cwd="/", **owner)
    try:
        listing = wire.encodeFrame([b"L", md.encode(), b"0"])
        proc.stdin.write(listing)
        proc.stdin.flush()
        decoder = wire.FrameDecoder()

        def answer():
            while True:
                data = os.read(proc.stdout.fileno(), 65536)
                assert data, f"the worker ended (status {proc.wait(10)})"
                frames = decoder.feed(data)
                if frames:
                    return b"".join(frames)

        first = answer()
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            proc.send_signal(number)
        proc.stdin.write(listing)
        proc.stdin.flush()
        assert answer() == first and proc.poll() is None
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workerStderrKeepsTheCause():
    """
    A worker's long stderr (a traceback) is logged with its last line, where the cause
    is: cut at 500 characters, 'unable to scan $HOME/Maildir' left the operator guessing.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    from qmailtx import pop3box

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        w = pop3box._WorkerProtocol(None, (1, 1))
        w.errReceived(b"Traceback (most recent call last):\n"
                      + b'  File "/usr/lib/python3/x.py", line 1, in f\n    g()\n' * 40
                      + b"KeyError: 'getpwuid(): uid not found: 54321'\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "".join(formatEvent(e) for e in events)
    assert "uid not found: 54321" in text
    assert len(text) < 2000


def test_workerRefusesUidZeroAndAnotherUid():
    """
    Asked for uid 0 the worker refuses (never a POP3 session as root); one that cannot
    become the uid it is asked for refuses too, with the reason, rather than serve as
    the wrong user.
    """
    import pytest

    from tests.service.pythonpath import environ

    if os.getuid() != 0:
        pytest.skip("needs root")
    command = ["-m", "qmailtx.scripts.pop3session"]
    root = subprocess.run([sys.executable, *command, "--uid", "0", "--gid", "0"], input=b"",
                          capture_output=True, env=environ(), cwd="/", timeout=30)
    assert (root.returncode, root.stderr) == (1, b"qmail-pop3d invoked as uid 0, terminating\n")
    python = requireUserPython(NOBODY, NOBODY)
    other = subprocess.run([python, *command, "--uid", "4321", "--gid", "4321"], input=b"",
                           capture_output=True, env=environ(), cwd="/", timeout=30,
                           user=NOBODY, group=NOBODY, extra_groups=[])
    assert other.returncode == 111
    assert other.stderr.startswith(b"pop3session: unable to become uid 4321 gid 4321: ")
