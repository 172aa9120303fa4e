"""
A 100 MB message goes out with flat memory: `qmailtx remote` to Postfix's smtp-sink keeps
its resident size within a few MB of the same command sending an empty message.
"""

import time
import shutil
import subprocess
import sys
import os

import pytest

from tests.service.daemon import freePort

QMAILTX = os.path.join(os.path.dirname(sys.executable), "qmailtx")


def maxRSS(argv, stdin):
    """Peak RSS (KiB) of one command, run through a fresh Python that reports its child's."""
    probe = ("import resource, subprocess, sys\n"
             "subprocess.run(sys.argv[2:], stdin=open(sys.argv[1], 'rb'), check=True,"
             " stdout=subprocess.DEVNULL)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, stdin, *argv], capture_output=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="needs Postfix's smtp-sink")
def test_hundredMegabytesFlatMemory(tmp_path):
    """Streaming a 100 MB message costs no more than 16 MB over sending an empty one."""
    port = freePort()
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    (tmp_path / "control" / "smtproutes").write_bytes(b":127.0.0.1:%d\n" % port)
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "10"])
    try:
        big = tmp_path / "big"
        with open(big, "wb") as f:
            chunk = (b"x" * 75 + b"\n") * 999 + b".\n"
            for _ in range(100 * 1024 * 1024 // len(chunk)):
                f.write(chunk)
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        argv = [QMAILTX, "remote", "--root", str(tmp_path), "example.org", "a@b", "c@d"]
        base = maxRSS(argv, str(empty))
        large = maxRSS(argv, str(big))
        assert large - base < 16 * 1024, (base, large)
        out = subprocess.run(argv, stdin=open(big, "rb"), capture_output=True).stdout
        assert out.startswith(b"r\0K127.0.0.1 accepted message.\n"), out
    finally:
        sink.terminate()
        sink.wait()


def peakKiB(pid):
    """The process's peak resident size so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="needs Postfix's smtp-sink")
def test_hundredMegabytesThroughDaemon(tmp_path):
    """
    A 100 MB message queued with 'qmailtx queue' leaves a live twistd qmail through its
    remote lane (smtproutes to smtp-sink) while the daemon's peak RSS grows less than 16 MB
    over what a small message had already brought it to.
    """
    from qmailtx.rootdir import createRoot
    from tests.service.daemon import Daemon

    port = freePort()
    root = tmp_path / "root"
    createRoot(str(root), "me.example")
    (root / "control" / "smtproutes").write_bytes(b":127.0.0.1:%d\n" % port)
    sinkArgv = ["smtp-sink", f"127.0.0.1:{port}", "10"]
    if os.geteuid() == 0:
        sinkArgv[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(sinkArgv)
    daemon = Daemon(str(root)).start()
    try:
        big = tmp_path / "big"
        with open(big, "wb") as f:
            chunk = (b"x" * 75 + b"\n") * 999 + b".\n"
            for _ in range(100 * 1024 * 1024 // len(chunk)):
                f.write(chunk)
        small = tmp_path / "small"
        small.write_bytes(b"Subject: warm-up\n\nsmall\n")

        def queue(path, number):
            envelope = os.pipe()
            os.write(envelope[1], b"Fa@me.example\0Tjoe@example.org\0\0")
            os.close(envelope[1])
            with open(path, "rb") as stdin:
                subprocess.run([QMAILTX, "queue", "--root", str(root)], stdin=stdin,
                               stdout=envelope[0], check=True, timeout=120)
            os.close(envelope[0])
            deadline = time.monotonic() + 120
            while f"delivery {number}: success" not in daemon.log():
                assert time.monotonic() < deadline, daemon.log()[-3000:]
                time.sleep(0.1)

        queue(small, 1)
        before = peakKiB(daemon.process.pid)
        queue(big, 2)
        after = peakKiB(daemon.process.pid)
        assert after - before < 16 * 1024, (before, after)
        assert "delivery 2: success: 127.0.0.1_accepted_message." in daemon.log()
    finally:
        daemon.stop()
        sink.terminate()
        sink.wait()
