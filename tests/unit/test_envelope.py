"""qmailtx.envelope: qmail-queue's envelope, todo header, records and Received line."""

import pytest

from qmailtx.envelope import (
    ADDRESS_LIMIT, EnvelopeError, EnvelopeReader, date822, encodeEnvelope, encodeTodo,
    encodeTodoHeader, parseEnvelope, parseRecords, receivedLine)


def test_encodeEnvelope():
    """F<sender>\\0, T<rcpt>\\0 per recipient, then one extra \\0."""
    assert encodeEnvelope(b"a@x", [b"b@y", b"c@z"]) == b"Fa@x\0Tb@y\0Tc@z\0\0"
    assert encodeEnvelope(b"", []) == b"F\0\0"


def test_encodeTooLong():
    """An address of 1002 bytes passes; 1003 bytes is exit 11 (too long for qq)."""
    encodeEnvelope(b"a" * ADDRESS_LIMIT, [b"b" * ADDRESS_LIMIT])
    with pytest.raises(EnvelopeError) as e:
        encodeEnvelope(b"a", [b"b" * (ADDRESS_LIMIT + 1)])
    assert e.value.code == 11
    with pytest.raises(EnvelopeError) as e:
        encodeEnvelope(b"a" * (ADDRESS_LIMIT + 1), [])
    assert e.value.code == 11


def test_encodeNul():
    """An address containing NUL cannot be framed: format error 91."""
    with pytest.raises(EnvelopeError) as e:
        encodeEnvelope(b"a\0b", [])
    assert e.value.code == 91


def test_todo():
    """todo/intd files: u<uid>\\0p<pid>\\0 then F and T records, no final extra NUL."""
    assert encodeTodoHeader(1000, 4711) == b"u1000\0p4711\0"
    assert encodeTodo(7, 9, b"s@x", [b"r@y"]) == b"u7\0p9\0Fs@x\0Tr@y\0"


def test_parseRecords():
    """Records split at NUL into (letter, value); an unterminated tail is dropped."""
    assert parseRecords(b"u7\0p9\0F\0Tr@y\0Dq@z\0Tcut") == [
        (b"u", b"7"), (b"p", b"9"), (b"F", b""), (b"T", b"r@y"), (b"D", b"q@z")]


def test_parseEnvelope():
    """A whole envelope parses to sender and recipients; bytes after the final NUL are ignored."""
    assert parseEnvelope(b"Fa@x\0Tb@y\0Tc@z\0\0junk") == (b"a@x", [b"b@y", b"c@z"])
    assert parseEnvelope(b"F\0\0") == (b"", [])


@pytest.mark.parametrize("data,code", [
    (b"", 54), (b"Fa@x\0", 54), (b"Fa@x\0Tb", 54), (b"Fa@x", 54),
    (b"Xa@x\0\0", 91), (b"Fa@x\0Xb@y\0\0", 91), (b"\0", 91),
    (b"F" + b"a" * 1003 + b"\0\0", 11), (b"Fa\0T" + b"b" * 1003 + b"\0\0", 11),
    (b"Fa\0T" + b"b" * 5000, 11),
])
def test_parseErrors(data, code):
    """EOF before the final NUL is 54, a wrong record letter 91, an address over 1002 bytes 11."""
    with pytest.raises(EnvelopeError) as e:
        parseEnvelope(data)
    assert e.value.code == code


def test_readerByteByByte():
    """Fed one byte at a time, the reader gives the same result and stops at the final NUL."""
    data = b"Fa@x\0T" + b"b" * ADDRESS_LIMIT + b"\0Tc\0\0trailing"
    reader = EnvelopeReader()
    results = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert results.index(True) == data.index(b"\0\0") + 1
    assert reader.finish() == (b"a@x", [b"b" * ADDRESS_LIMIT, b"c"])


def test_readerRejectsEarly():
    """An over-long address is refused before its NUL arrives (memory stays bounded)."""
    reader = EnvelopeReader()
    reader.feed(b"Fa\0T")
    with pytest.raises(EnvelopeError) as e:
        for _ in range(10):
            reader.feed(b"x" * 200)
    assert e.value.code == 11


def test_date822():
    """UTC, day not zero-padded, time fields padded, -0000 zone."""
    assert date822(1732217160) == b"21 Nov 2024 19:26:00 -0000"
    assert date822(1704070800 + 5) == b"1 Jan 2024 01:00:05 -0000"


def test_receivedLine():
    """The queue program's line: Received: (qmail <qp> invoked <how>); <date>\\n."""
    assert receivedLine(4711, b"from network", 1732217160) == (
        b"Received: (qmail 4711 invoked from network); 21 Nov 2024 19:26:00 -0000\n")
    assert receivedLine(5, b"by uid 1000", 1732217160).startswith(
        b"Received: (qmail 5 invoked by uid 1000); ")
