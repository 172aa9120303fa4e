"""qmail-smtpd's address parsing, policy checks and Received line (spec/smtp.md §4–6)."""

import calendar

import pytest

from qmailtx import address


@pytest.mark.parametrize("arg, expected", [
    (b"FROM:<a@b>", b"a@b"),
    (b"FROM:<a@b> SIZE=10", b"a@b"),
    (b"<me@domain>", b"me@domain"),
    (b"FROM:me@domain", b"me@domain"),
    (b"from: me@domain trailing", b"me@domain"),
    (b"joe@x", b""),
    (b"FROM:<>", b""),
    (b"TO:<@relay1,@relay2:joe@x>", b"joe@x"),
    (b'TO:<"joe smith"@x>', b"joe smith@x"),
    (b'TO:<"a>b"@x>', b"a>b@x"),
    (b"TO:<a\\>b@x>", b"a>b@x"),
    (b"TO:<Joe@Example.COM>", b"Joe@Example.COM"),
    (b"TO:<unterminated", b"unterminated"),
])
def test_extractAddress(arg, expected):
    """Addresses are extracted as qmail-smtpd's addrparse() does, case preserved."""
    assert address.extractAddress(arg)[0] == expected


def test_parameters_after_address():
    """What follows the terminator is the ESMTP parameter text."""
    assert address.extractAddress(b"FROM:<a@b> SIZE=10 BODY=8BITMIME")[1] == b" SIZE=10 BODY=8BITMIME"
    assert address.sizeParameter(b" size=123 BODY=8BITMIME") == 123
    assert address.sizeParameter(b" BODY=8BITMIME") is None
    assert address.sizeParameter(b" SIZE=abc") is None


def test_address_limit():
    """899 bytes is fine, 900 bytes is a syntax error."""
    assert address.parseAddress(b"<" + b"a" * 899 + b">") is not None
    assert address.parseAddress(b"<" + b"a" * 900 + b">") is None


def test_localiphost():
    """A bracketed local IP becomes the localiphost name; a foreign one stays."""
    ipme = frozenset({b"127.0.0.1", b"0.0.0.0"})
    assert address.parseAddress(b"<joe@[127.0.0.1]>", ipme, b"mx.example")[0] == b"joe@mx.example"
    assert address.parseAddress(b"<joe@[0.0.0.0]>", ipme, b"mx.example")[0] == b"joe@mx.example"
    assert address.parseAddress(b"<joe@[10.1.1.1]>", ipme, b"mx.example")[0] == b"joe@[10.1.1.1]"
    assert address.parseAddress(b"<joe@[127.0.0.1]x>", ipme, b"mx.example")[0] == b"joe@[127.0.0.1]x"


def test_badmailfrom():
    """Whole address or @domain (from the last @), case-insensitively; <> never matches."""
    bad = frozenset({b"spam@example.com", b"@evil.example"})
    assert address.badmailfromMatches(b"Spam@Example.com", bad)
    assert address.badmailfromMatches(b"x@EVIL.example", bad)
    assert not address.badmailfromMatches(b"x@sub.evil.example", bad)
    assert not address.badmailfromMatches(b"", bad)


def test_rcpthosts():
    """Domain or a .suffix listed; no file allows all; no @ allowed; exact vs dot entries."""
    hosts = frozenset({b"example.com", b".example.org"})
    allows = lambda r, more=None: address.rcpthostsAllows(r, hosts, more)
    assert address.rcpthostsAllows(b"a@anything", None)
    assert allows(b"joe")
    assert allows(b"joe@EXAMPLE.com")
    assert not allows(b"joe@sub.example.com")
    assert allows(b"joe@sub.example.org")
    assert not allows(b"joe@example.org")
    assert allows(b"joe@x@example.com")
    assert not allows(b"joe@example.com@other.net")
    assert allows(b"joe@more.example.net", {b"more.example.net"})
    assert allows(b"joe@a.more.example.net", {b".example.net"})


def test_received_line_exact():
    """Byte-for-byte Received line with HELO differing, ident, and unsafe bytes."""
    when = calendar.timegm((2024, 11, 1, 9, 6, 0))
    line = address.receivedLine(b"unknown", b"dude", None, b"127.0.0.1", b"localhost", b"SMTP", when)
    assert line == (b"Received: from unknown (HELO dude) (127.0.0.1)\n"
                    b"  by localhost with SMTP; 1 Nov 2024 09:06:00 -0000\n")
    line = address.receivedLine(b"host.example", b"HOST.example", b"joe", b"10.0.0.1",
                                b"mx", b"SMTP", when)
    assert line == (b"Received: from host.example (joe@10.0.0.1)\n"
                    b"  by mx with SMTP; 1 Nov 2024 09:06:00 -0000\n")
    line = address.receivedLine(b"unknown", b"a b\r\n[1.2.3.4]", None, b"1.2.3.4", b"mx", b"SMTP", when)
    assert b"(HELO a?b??[1.2.3.4])" in line


def test_received_no_helo_yet():
    """Before HELO the HELO state is the remote host name: no HELO part."""
    line = address.receivedLine(b"unknown", None, None, b"1.2.3.4", b"mx", b"SMTP", 0)
    assert line.startswith(b"Received: from unknown (1.2.3.4)\n")


def test_ipmeWhenInterfacesCannotBeRead(monkeypatch):
    """ipme() falls back to the loopback addresses; ipmeOrNone() says it does not know."""
    from qmailtx import ipme

    assert b"127.0.0.1" in ipme.ipmeOrNone()

    def broken():
        raise OSError(19, "no such device")
    monkeypatch.setattr(ipme, "interfaceAddresses", broken)
    assert ipme.ipme() == frozenset({b"0.0.0.0", b"127.0.0.1"})
    assert ipme.ipmeOrNone() is None
