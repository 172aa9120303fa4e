"""Retry times and queue lifetime (spec/queue.md §6)."""

from qmailtx import schedule
from qmailtx.results import Delivered, PermFailure, TempFailure

BIRTH = 1_700_000_000


def attempts(skip, count):
    """Attempt times for a message handled promptly, starting at birth."""
    now, out = BIRTH, []
    for _ in range(count):
        out.append(now - BIRTH)
        now = schedule.nextRetry(BIRTH, now, skip)
    return out


def test_localTable():
    """Local (C=10): attempts at 0, 100, 400, 900, 1600 s."""
    assert attempts(schedule.LOCAL_SKIP, 5) == [0, 100, 400, 900, 1600]


def test_remoteTable():
    """Remote (C=20): attempts at 0, 400, 1600, 3600, 6400 s."""
    assert attempts(schedule.REMOTE_SKIP, 5) == [0, 400, 1600, 3600, 6400]


def test_integerSquareRootFloor():
    """isqrt is floored: 399 s after birth still gives (19+10)^2."""
    assert schedule.nextRetry(BIRTH, BIRTH + 399, 10) == BIRTH + 29 * 29


def test_futureBirth():
    """A birth in the future (clock skew) gives birth + C^2."""
    assert schedule.nextRetry(BIRTH, BIRTH - 50, 20) == BIRTH + 400


def test_dying():
    """Dying only strictly after birth + queuelifetime."""
    assert not schedule.isDying(BIRTH, BIRTH + 604800)
    assert schedule.isDying(BIRTH, BIRTH + 604801)
    assert schedule.isDying(BIRTH, BIRTH + 11, queuelifetime=10)


def test_expire():
    """While dying a Z becomes D with the "too long" line appended; K and D are unchanged."""
    result = schedule.expire(TempFailure(b"Connection refused.\n"), True)
    assert result == PermFailure(
        b"Connection refused.\nI'm not going to try again; this message has been in the queue too long.\n")
    assert schedule.expire(TempFailure(b"x"), False) == TempFailure(b"x")
    assert schedule.expire(Delivered(b"k"), True) == Delivered(b"k")
    assert schedule.expire(PermFailure(b"d"), True) == PermFailure(b"d")
