"""
The remote channel's control settings on a real control/ directory: read once, then served
for L{qmailtx.remote.CONTROL_RECHECK} seconds, then re-read (spec/remote.md §1: qmail-remote
reads its controls per run; a second's delay is the price of not stat'ing seven files per
message).
"""

from twisted.internet.task import Clock

from qmailtx.control import ControlDir
from qmailtx.remote import CONTROL_RECHECK, RemoteDeliverer


def test_routesRereadAfterRecheck(tmp_path):
    """An smtproutes edit reaches deliveries after CONTROL_RECHECK seconds, not before;
    a route still matches per host within one snapshot."""
    (tmp_path / "me").write_bytes(b"me.example\n")
    (tmp_path / "smtproutes").write_bytes(b"a.example:relay1:2525\n")
    clock = Clock()
    clock.advance(1000)
    deliverer = RemoteDeliverer(ControlDir(str(tmp_path)), clock, resolver=object(),
                                ipme=[])
    first = deliverer._settings(b"a.example")
    assert (first["smtpRoute"].relay, first["smtpRoute"].port) == (b"relay1", 2525)
    assert deliverer._settings(b"b.example")["smtpRoute"] is None
    (tmp_path / "smtproutes").write_bytes(b"a.example:relay2\n")
    (tmp_path / "helohost").write_bytes(b"helo.example\n")
    clock.advance(CONTROL_RECHECK / 2)
    assert deliverer._settings(b"a.example")["smtpRoute"].relay == b"relay1"
    clock.advance(CONTROL_RECHECK)
    later = deliverer._settings(b"A.EXAMPLE")
    assert (later["smtpRoute"].relay, later["smtpRoute"].port) == (b"relay2", 25)
    assert later["helohost"] == b"helo.example"


def test_missingMeIsNotCached(tmp_path):
    """Without helohost and me every delivery fails (#4.3.0) until one appears."""
    clock = Clock()
    deliverer = RemoteDeliverer(ControlDir(str(tmp_path)), clock, resolver=object(), ipme=[])
    attempt = deliverer.attempt(b"x.example", b"a@b", [b"c@x.example"], str(tmp_path / "m"))
    assert attempt.result.message == b"ZUnable to read control files. (#4.3.0)\n"
    (tmp_path / "me").write_bytes(b"me.example\n")
    assert deliverer._settings(b"x.example")["helohost"] == b"me.example"
