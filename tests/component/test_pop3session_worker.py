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
