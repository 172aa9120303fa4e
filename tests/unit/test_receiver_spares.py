"""
A receiver's share of spare queue files (L{qmailtx.receiverchild.HandedSpares}): it asks the
daemon when it runs low, never twice at once, and after an empty answer not again for
L{SPARES_QUIET} seconds.
"""

import os

from qmailtx.receiverchild import SPARES_LOW, SPARES_QUIET, HandedSpares


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def test_asksWhenLowOnceAtATimeAndWaitsAfterNothing(tmp_path):
    asked = []
    clock = Clock()
    spares = HandedSpares(str(tmp_path), lambda: asked.append(clock.now), clock)
    spares.want()
    spares.want()
    assert spares.take(str(tmp_path / "a")) is None
    assert asked == [100.0]
    spares.answered([])
    assert spares.take(str(tmp_path / "b")) is None and asked == [100.0]
    clock.now += SPARES_QUIET
    assert spares.take(str(tmp_path / "c")) is None and asked == [100.0, clock.now]


def test_takesWhatItWasHandedAndAsksOnlyBelowTheLowMark(tmp_path):
    asked = []
    os.mkdir(tmp_path / "spare")
    names = [str(n) for n in range(SPARES_LOW + 2)]
    for name in names:
        (tmp_path / "spare" / name).write_bytes(b"old")
    spares = HandedSpares(str(tmp_path), lambda: asked.append(1), Clock())
    spares.answered(names)
    for i in range(2):
        fd = spares.take(str(tmp_path / f"new{i}"))
        assert fd is not None
        os.close(fd)
    assert asked == []
    os.close(spares.take(str(tmp_path / "new2")))
    assert asked == [1] and len(spares) == SPARES_LOW - 1
