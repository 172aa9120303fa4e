"""
Keep bench/ from rotting: run its smallest scenarios end to end against every peer this machine
can start, and check the record it writes.  No speed is asserted here (targets live in bench/).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                       reason="bench/smtpload.c needs a C compiler (bench/setup.sh)"),
]


@pytest.fixture(scope="module")
def benchRecord(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    record = tmp / "record.json"
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--messages", "20", "--idle", "50",
         "--scenarios", "smtp-rate-1perconn-1c-1k,idle", "--workdir", str(tmp),
         "--json", str(record)],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(record.read_text()), result.stdout, tmp


def test_qmailtxMeasured(benchRecord):
    """
    qmailtx always runs (it is this checkout); its rate row has a positive median and no
    failed message.
    """
    record, _, _ = benchRecord
    assert "qmailtx" in record["peers"]
    [rate] = [s for s in record["scenarios"] if s["key"] == "smtp-rate-1perconn-1c-1k"]
    assert rate["medians"]["qmailtx"] > 0
    assert rate["errors"]["qmailtx"] == 0


def test_everyPeerAcceptedAndStoredAll(benchRecord):
    """
    For every peer that started, the client counted a 250 for each of the 20 messages, and the
    peer holds at least that many messages on disk (a 250 without a stored message would make
    the rates a lie).
    """
    record, _, _ = benchRecord
    stored = record["environment"]["stored"]
    assert set(stored) == set(record["peers"])
    for peer, counts in stored.items():
        assert counts["accepted"] == 20, peer
        assert counts["stored"] >= 20, peer


def test_idleMemoryMeasured(benchRecord):
    """
    The idle row holds all 50 connections on every peer and reports a memory figure.
    """
    record, _, _ = benchRecord
    [idle] = [s for s in record["scenarios"] if s["key"] == "smtp-idle-memory"]
    for peer in record["peers"]:
        [sample] = idle["samples"][peer]
        assert sample["detail"]["held"] == 50, (peer, sample)
        assert sample["errors"] == 0, (peer, sample)
        assert idle["medians"][peer] is not None


def test_tablePrintedAndWorkdirRemoved(benchRecord):
    """
    The table has a row per scenario and a ratio column per other peer; the peers' temporary
    directories are gone afterwards.
    """
    record, stdout, tmp = benchRecord
    assert "SMTP  1 msg/conn  1 clients  1 KB" in stdout
    assert "SMTP 50 idle connections, memory" in stdout
    for peer in record["peers"]:
        if peer != "qmailtx":
            assert f"qmailtx/{peer}" in stdout
    assert list(tmp.glob("qmailtx-bench-*")) == []
