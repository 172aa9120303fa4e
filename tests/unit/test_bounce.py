"""QSBMF bounces and RFC 822 quoting (spec/queue.md §7-8)."""

import calendar

import pytest

from qmailtx import bounce

NOW = calendar.timegm((2024, 11, 21, 19, 26, 0))


@pytest.mark.parametrize("local, quoted", [
    (b"joe", b"joe"),
    (b"j.o.e", b"j.o.e"),
    (b"", b'""'),
    (b"a b", b'"a b"'),
    (b".joe", b'".joe"'),
    (b"joe.", b'"joe."'),
    (b"jo..e", b'"jo..e"'),
    (b'a"b\\c', b'"a\\"b\\\\c"'),
    (b"a\r\nb", b'"a\\\r\\\nb"'),
    (b"caf\xc3\xa9", b'"caf\xc3\xa9"'),
    (b"a(b)", b'"a(b)"'),
    (b"a,b;c:d<e>f@g[h]", b'"a,b;c:d<e>f@g[h]"'),
    (b"!#$%&'*+-/=?^_`{|}~", b"!#$%&'*+-/=?^_`{|}~"),
])
def test_quoteLocal(local, quoted):
    """Local parts are quoted exactly when RFC 822 needs it, escaping CR LF \" and backslash."""
    assert bounce.quoteLocal(local) == quoted


def test_quoteAddressSplitsAtLastAt():
    """Only the part before the last C{@} is quoted; empty stays empty."""
    assert bounce.quoteAddress(b"a b@c@example.com") == b'"a b@c"@example.com'
    assert bounce.quoteAddress(b"") == b""
    assert bounce.quoteAddress(b"x y") == b'"x y"'


def test_bounceEntryFormat():
    """Entry: C{<R>:}, the report (newline added), a blank line."""
    assert bounce.bounceEntry(b"bad@example.org", b"Sorry, no mailbox here by that name. (#5.1.1)") \
        == b"<bad@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
    assert bounce.bounceEntry(b"r@h", b"text\n") == b"<r@h>:\ntext\n\n"


def test_bounceEntryEmptyLinesBecomeSlash():
    """Inside an entry every empty line has its newline replaced by C{/}."""
    assert bounce.bounceEntry(b"r@h", b"a\n\nb\n\n\nc\n") == b"<r@h>:\na\n/b\n//c\n\n"


def test_bounceEntryNewlineInRecipient():
    """A newline in the recipient is shown as C{_}."""
    assert bounce.bounceEntry(b"a\nb@h", b"x\n").startswith(b"<a_b@h>:\n")


def test_stripVirtualPrepend():
    """A virtualdomains prepend is removed for the domain, a dot-suffix or the catch-all."""
    vd = {b"nowhere.mil": b"joe-foo", b".sub.org": b"sp", b"": b"all", b"u@x.com": b"vu"}
    assert bounce.stripVirtualPrepend(b"joe-foo-info@nowhere.mil", vd) == b"info@nowhere.mil"
    assert bounce.stripVirtualPrepend(b"sp-a@b.sub.org", vd) == b"a@b.sub.org"
    assert bounce.stripVirtualPrepend(b"all-z@other.net", vd) == b"z@other.net"
    assert bounce.stripVirtualPrepend(b"vu-u@x.com", {b"u@x.com": b"vu"}) == b"vu-u@x.com"
    assert bounce.stripVirtualPrepend(b"other-info@nowhere.mil", vd) == b"other-info@nowhere.mil"


def test_stripStopsAtFirstKeyEvenIfEmptyPrepend():
    """An exception (empty prepend) stops the search: the catch-all is not applied."""
    vd = {b"ex.com": b"", b"": b"all"}
    assert bounce.stripVirtualPrepend(b"all-a@ex.com", vd) == b"all-a@ex.com"


def test_cutVerp():
    """C{owner-@host-@[]} bounces to C{owner-@host}."""
    assert bounce.cutVerp(b"owner-@host-@[]") == b"owner-@host"
    assert bounce.cutVerp(b"joe@h") == b"joe@h"


def test_bounceEnvelope():
    """Single bounce: <> to S; double: #@[] to doublebounceto@host; triple: discard."""
    assert bounce.bounceEnvelope(b"joe@x", b"postmaster", b"h") == (b"", b"joe@x")
    assert bounce.bounceEnvelope(b"", b"postmaster", b"h") == (b"#@[]", b"postmaster@h")
    assert bounce.bounceEnvelope(b"#@[]", b"postmaster", b"h") is None


def test_singleBounceByteExact():
    """The single bounce matches spec/queue.md §8 byte for byte."""
    entry = bounce.bounceEntry(b"bad@example.org", b"Sorry, no mailbox here by that name. (#5.1.1)\n")
    original = b"Received: (qmail 1 invoked by uid 5); 21 Nov 2024 19:25:00 -0000\nSubject: x\n\nbody\n"
    message = bounce.bounceMessage(b"joe@example.com", b"joe@example.com", entry, original, NOW,
                                   b"MAILER-DAEMON", b"BH")
    assert message == (
        b"Date: 21 Nov 2024 19:26:00 -0000\n"
        b"From: MAILER-DAEMON@BH\n"
        b"To: joe@example.com\n"
        b"Subject: failure notice\n"
        b"\n"
        b"Hi. This is the qmail-send program at BH.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n"
        b"\n"
        b"<bad@example.org>:\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\n"
        b"\n"
        b"--- Below this line is a copy of the message.\n"
        b"\n"
        b"Return-Path: <joe@example.com>\n" + original)


def test_doubleBounceText():
    """A double bounce uses the "bounce bounced" intro, separator, and C{Return-Path: <>}."""
    message = bounce.bounceMessage(b"", b"postmaster@h", b"<a@b>:\nx\n\n", b"M", NOW,
                                   b"MAILER-DAEMON", b"BH")
    assert b"Hi. This is the qmail-send program at BH.\n" \
           b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n" \
           b"<a@b>:\nx\n\n--- Below this line is the original bounce.\n\nReturn-Path: <>\nM" in message
    assert b"To: postmaster@h\n" in message


def test_bounceQuotesFromToAndReturnPath():
    """From: bouncefrom, To: and Return-Path: local parts are RFC 822-quoted."""
    message = bounce.bounceMessage(b"a b@x", b"a b@x", b"", b"", NOW, b"MAILER DAEMON", b"h")
    assert b'From: "MAILER DAEMON"@h\n' in message
    assert b'To: "a b"@x\n' in message
    assert b'Return-Path: <"a b"@x>\n' in message


def test_dateDayNotPadded():
    """The Date field's day is not zero-padded."""
    assert bounce.dateField(calendar.timegm((2024, 11, 5, 1, 2, 3))) == \
        b"Date: 5 Nov 2024 01:02:03 -0000\n"
