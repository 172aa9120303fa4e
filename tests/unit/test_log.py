"""qmail-send's logsafe (L{qmailtx.log.logsafe}): what an address may put in a log line."""

from qmailtx.log import logsafe


def test_everyByte():
    """Newline becomes '/', controls, space, DEL, 8-bit bytes and '%' become '_', the rest stays."""
    expected = "".join("/" if b == 10 else "_" if b < 33 or b > 126 or b == 37 else chr(b)
                       for b in range(256))
    assert logsafe(bytes(range(256))) == expected
    assert logsafe(b"a b%c\nd\x7f") == "a_b_c/d_"


def test_textIsItsBytes():
    """A str is logged as its UTF-8 bytes (undecodable ones kept by surrogateescape)."""
    assert logsafe("joe@example.org") == "joe@example.org"
    assert logsafe("j\u00f6e") == "j__e"
    assert logsafe(b"x\xff".decode("utf-8", "surrogateescape")) == "x_"


def test_stampedLinesAreTwistdsLines(monkeypatch):
    """StampedObserver writes what twistd's default observer writes, byte for byte: qmail
    lines in two different seconds, a warning, a Twisted event and a traceback."""
    import io
    import time

    from twisted.logger import Logger, textFileLogObserver

    from qmailtx import log

    events = []
    monkeypatch.setattr(log, "_log", Logger(namespace="qmailtx", observer=events.append))
    log.newMessage(17)
    log.infoMessage(17, 1166, b"a@example.org", 4711, 0)
    log.warning("trouble injecting bounce message, will try later")
    Logger(namespace="twisted.internet", observer=events.append).info(
        "Starting factory {f!r}", f=object)
    try:
        1 / 0
    except ZeroDivisionError:
        Logger(observer=events.append).failure("a callback failed")
    log.event("end msg 17")
    events[-1]["log_time"] = events[0]["log_time"] + 1.5
    events[1]["log_system"] = "SMTPServer,3,127.0.0.1"
    theirs, ours = io.StringIO(), io.StringIO()
    twistd, stamped = textFileLogObserver(theirs), log.StampedObserver(ours)
    for e in events:
        twistd(e)
        stamped(e)
    assert ours.getvalue() == theirs.getvalue()
    lines = ours.getvalue().splitlines()
    assert lines[0].endswith(" [qmailtx#info] new msg 17")
    assert lines[1].endswith(" [SMTPServer,3,127.0.0.1] info msg 17: bytes 1166 from "
                             "<a@example.org> qp 4711 uid 0")
    assert time.strftime("%Y-%m-%dT", time.localtime(events[0]["log_time"])) in lines[0]


def test_observersTakeNewStyleEvents():
    """Both observers declare ILogObserver, so twistd hands them events directly instead of
    through its legacy-observer wrapper (which converts every event first)."""
    import io

    from twisted.logger import ILogObserver

    from qmailtx.log import MultilogObserver, StampedObserver

    assert ILogObserver.providedBy(StampedObserver(io.StringIO()))
    assert ILogObserver.providedBy(MultilogObserver(io.StringIO()))
