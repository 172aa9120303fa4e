"""The mbox writer on real temp files (spec/local.md §7, mbox row)."""

import fcntl
import io
import os

import pytest

from qmailtx import mbox
from qmailtx.results import TempFailure


class BrokenMessage(io.BytesIO):
    """A message that fails to read after its first line."""

    def readline(self, size=-1):
        if self.tell() > 0:
            raise OSError(5, "io")
        return super().readline(size)


def test_quotingAndBlankLine(tmp_path):
    """C{^>*From } lines get one more C{>}; others unchanged; a blank line ends the message."""
    path = os.fsencode(tmp_path / "box")
    mbox.deliver(path, b"H\n", io.BytesIO(b"From a\n>From b\n>>From c\nFrom\nXFrom d\nlast"))
    assert open(path, "rb").read() == b"H\n>From a\n>>From b\n>>>From c\nFrom\nXFrom d\nlast\n\n"


def test_readErrorTruncatesBack(tmp_path):
    """A read failure leaves the mbox at its old size (we hold the lock) and defers."""
    path = os.fsencode(tmp_path / "box")
    mbox.deliver(path, b"H\n", io.BytesIO(b"first\n"))
    before = open(path, "rb").read()
    with pytest.raises(TempFailure) as e:
        mbox.deliver(path, b"H\n", BrokenMessage(b"x\ny\n"))
    assert e.value.text == b"Unable to read message: input/output error. (#4.3.0)\n"
    assert open(path, "rb").read() == before


def test_lockedThirtySeconds(tmp_path):
    """A lock held for the whole wait: C{File has been locked for 30 seconds straight.}"""
    path = os.fsencode(tmp_path / "box")
    holder = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    try:
        with pytest.raises(TempFailure) as e:
            mbox.deliver(path, b"H\n", io.BytesIO(b"m\n"), clock=lambda: now[0], sleep=sleep)
    finally:
        os.close(holder)
    assert e.value.text == b"File has been locked for 30 seconds straight. (#4.3.0)\n"
    assert 30 <= now[0] < 31
    assert open(path, "rb").read() == b""
