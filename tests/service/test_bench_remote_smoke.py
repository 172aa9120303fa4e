"""
Keep the remote relay row of bench/ working: C{python -m bench.remote} with a tiny batch on
qmailtx (and Postfix when this machine can start it), every injected message delivered to
smtp-sink and counted.  No speed is asserted here (the target lives in bench/remote.py).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                       reason="bench/smtpload.c needs a C compiler (bench/setup.sh)"),
    pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="needs Postfix's smtp-sink"),
]


@pytest.fixture
def workdir():
    """A short path: the daemon's control socket lives below it (AF_UNIX's 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qbr-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_remoteRowDeliversEverything(workdir):
    """Each measured peer relays all 80 messages (4 x --messages 20) with no error."""
    record = workdir / "record.json"
    peers = "qmailtx,postfix" if os.geteuid() == 0 and shutil.which("postfix") else "qmailtx"
    result = subprocess.run(
        [sys.executable, "-m", "bench.remote", "--quick", "--messages", "20", "--peers", peers,
         "--workdir", str(workdir), "--json", str(record)],
        cwd=CHECKOUT, env=dict(os.environ, PYTHONPATH=str(CHECKOUT)), capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = json.loads(record.read_text())
    [row] = saved["scenarios"]
    assert row["key"] == "remote-relay-20c-1k"
    assert "qmailtx" in saved["peers"]
    for peer in saved["peers"]:
        [sample] = row["samples"][peer]
        assert sample["errors"] == 0 and sample["value"] > 0, (peer, sample)
        assert sample["detail"]["delivered"] == 80, (peer, sample)
