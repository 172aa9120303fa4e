"""Netstring encoder and incremental decoder (spec/qmqp-qmtp.md §1)."""

import pytest

from qmailtx import netstring
from qmailtx.netstring import DATA, END, LENGTH, NetstringDecoder, NetstringError, NetstringLengthError


def feedBytewise(decoder, data):
    events = []
    for i in range(len(data)):
        events.extend(decoder.feed(data[i:i + 1]))
    return events


def payloads(events):
    out, cur = [], None
    for kind, value in events:
        if kind == LENGTH:
            cur = []
        elif kind == DATA:
            cur.append(value)
        else:
            out.append(b"".join(cur))
    return out


def test_encodeExample():
    """The spec's example: C{hello world!} is C{12:hello world!,}; empty is C{0:,}."""
    assert netstring.encode(b"hello world!") == b"12:hello world!,"
    assert netstring.encode(b"") == b"0:,"
    assert netstring.encodeList([b"a", b"bc"]) == b"1:a,2:bc,"


def test_decodeRoundTrip():
    """decode() splits one netstring off and returns the rest untouched."""
    assert netstring.decode(b"3:abc,5:hello,") == (b"abc", b"5:hello,")
    assert netstring.decodeAll(b"3:abc,0:,1:,,") == [b"abc", b"", b","]


@pytest.mark.parametrize("chunked", [False, True])
def test_incrementalEvents(chunked):
    """Events are the same whether the input comes whole or one byte at a time."""
    data = b"5:hello,0:,3:a:b,"
    d = NetstringDecoder()
    events = feedBytewise(d, data) if chunked else d.feed(data)
    assert payloads(events) == [b"hello", b"", b"a:b"]
    assert [e for e in events if e[0] != DATA] == [
        (LENGTH, 5), (END, None), (LENGTH, 0), (END, None), (LENGTH, 3), (END, None)]
    assert d.atBoundary


def test_payloadStreamedNotBuffered():
    """A payload is handed on chunk by chunk as it arrives; the decoder keeps none of it."""
    d = NetstringDecoder()
    assert d.feed(b"10:abc") == [(LENGTH, 10), (DATA, b"abc")]
    assert d.remaining == 7
    assert d.feed(b"defghij,") == [(DATA, b"defghij"), (END, None)]


@pytest.mark.parametrize("bad", [b"1a:x,", b"x:,", b"-1:x,", b" 1:x,", b"1 :x,", b"+1:x,"])
def test_nonDigitIsProtocolError(bad):
    """A non-digit before the colon is a protocol error (notqmail 1.09)."""
    with pytest.raises(NetstringError) as e:
        NetstringDecoder().feed(bad)
    assert not isinstance(e.value, NetstringLengthError)


@pytest.mark.parametrize("bad", [b"3:abc;", b"3:abcd,", b"0:x"])
def test_missingCommaIsProtocolError(bad):
    """Whatever follows the payload must be a comma."""
    with pytest.raises(NetstringError):
        NetstringDecoder().feed(bad)


def test_lengthLimit():
    """200000000 is allowed; anything above is a resource error, found before the colon."""
    assert NetstringDecoder().feed(b"200000000:") == [(LENGTH, 200000000)]
    with pytest.raises(NetstringLengthError):
        NetstringDecoder().feed(b"200000001:")
    d = NetstringDecoder()
    with pytest.raises(NetstringLengthError):
        feedBytewise(d, b"9999999999")
    with pytest.raises(NetstringLengthError):
        NetstringDecoder().feed(b"0" * 50 + b"1:")
    with pytest.raises(NetstringLengthError):
        NetstringDecoder(maxLength=10).feed(b"11:")


def test_qmailLeniency():
    """As qmail's getlen(): leading zeros are read as decimal, an empty length is 0."""
    assert payloads(NetstringDecoder().feed(b"03:abc,:,")) == [b"abc", b""]


def test_boundKeepsNestedInside():
    """With a bound, a netstring that cannot fit (payload plus comma) fails at once."""
    d = NetstringDecoder(bound=6)
    with pytest.raises(NetstringError):
        d.feed(b"4:")
    d = NetstringDecoder(bound=6)
    assert payloads(d.feed(b"3:abc,")) == [b"abc"]
    assert d.bound == 0
    d = NetstringDecoder(bound=4)
    assert d.feed(b"1:a,extra") == [(LENGTH, 1), (DATA, b"a"), (END, None)]
    assert d.consumed == 4


def test_stopAfterEnd():
    """stopAfterEnd leaves the input after a netstring unread, for the caller."""
    d = NetstringDecoder()
    d.stopAfterEnd = True
    assert payloads(d.feed(b"1:a,garbage")) == [b"a"]
    assert d.consumed == 4


def test_truncatedDecode():
    """decode() of an incomplete netstring is an error, not a silent empty result."""
    with pytest.raises(NetstringError):
        netstring.decode(b"5:abc")
