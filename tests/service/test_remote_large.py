"""
A 100 MB message goes out with flat memory: `qmailtx remote` to Postfix's smtp-sink keeps
its resident size within a few MB of the same command sending an empty message.
"""

import resource
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
