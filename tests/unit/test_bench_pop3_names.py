"""
bench.pop3's maildirs stand for what they claim: its qmailtx-style names are ones qmailtx's
reader trusts (so that row measures the stat-free scan), its plain names are not.
"""

from bench.pop3 import messageName
from qmailtx import maildir


def test_benchNamesAsDelivered():
    """Names of the qmailtx-style bench maildir read back as their mtime and size; plain ones need a stat."""
    base = 1700000000
    for i in (0, 1, 19, 20, 49999):
        name, mtime = messageName(i, 1020, "qmailtx", base)
        assert maildir.deliveredStat(name.encode()) == (mtime, 1020)
        plain, _ = messageName(i, 1020, "plain", base)
        assert maildir.deliveredStat(plain.encode()) is None


def test_benchNamesSortLikeTheirTimes():
    """Bench mtimes rise with the message number, so both maildirs list in the order created."""
    for style in ("qmailtx", "plain"):
        times = [messageName(i, 1, style, 1700000000)[1] for i in range(100)]
        assert times == sorted(times) and len(set(times)) == 100
