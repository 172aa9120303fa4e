"""
qmailtx.log.MultilogObserver: bare qmail lines for multilog to timestamp, as qmail-send writes them.
"""

import io

from twisted.logger import Logger, LogPublisher

from qmailtx.log import MultilogObserver


def published():
    out = io.StringIO()
    publisher = LogPublisher(MultilogObserver(out))
    return Logger(namespace="test", observer=publisher), out


def test_qmailLinesAreWrittenBare():
    """A qmail event is exactly its line: no timestamp, no [system], braces kept as they are."""
    log, out = published()
    log.info("{qmail}", qmail="info msg 42: bytes 100 from <a{b}@c> qp 7 uid 0")
    log.warn("{qmail}", qmail="warning: trouble")
    assert out.getvalue() == "info msg 42: bytes 100 from <a{b}@c> qp 7 uid 0\nwarning: trouble\n"


def test_otherEventsFormattedOnOneLine():
    """Other events are formatted by Twisted; a traceback stays on the event's line."""
    log, out = published()
    log.info("listening on {port}", port=25)
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("oops")
    lines = out.getvalue().splitlines()
    assert lines[0] == "listening on 25"
    assert len(lines) == 2 and lines[1].startswith("oops / Traceback") and "ZeroDivisionError" in lines[1]


def test_emptyEventsWriteNothing():
    """An event without text writes no empty line."""
    log, out = published()
    log.info()
    assert out.getvalue() == ""


def test_dnsPortChurnIsNotLogged():
    """
    twisted.names opens a UDP port per query (a fresh source port against spoofed answers)
    and Twisted logs its opening and closing unconditionally: two lines per DNS lookup,
    none of them qmail's.  Both observers leave them out; other UDP lines stay.
    """
    from qmailtx.log import StampedObserver

    for observer in (MultilogObserver, StampedObserver):
        out = io.StringIO()
        log = Logger(namespace="twisted", observer=LogPublisher(observer(out)))
        for text in ("DNSDatagramProtocol starting on 40123", "(UDP Port 40123 Closed)",
                     "MyProtocol starting on 53"):
            log.info(text)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].endswith("MyProtocol starting on 53"), lines
