"""
The queue socket's wire format (qmailtx.queueframe): message chunks, the end chunk, the
answer line, and the Received wording chosen for a client's uid.
"""

import pytest

from qmailtx.queueframe import (CHUNK_LIMIT, MESSAGE_END, FramingError, MessageDecoder,
                                encodeAnswer, encodeChunk, parseAnswer, receivedHow)


def decodeAll(wire, step):
    """Feed C{wire} in pieces of C{step} bytes; return (message, rest)."""
    decoder = MessageDecoder()
    message = b""
    rest = None
    for i in range(0, len(wire), step):
        pieces, rest = decoder.feed(wire[i:i + step])
        message += b"".join(bytes(p) for p in pieces)
        if rest is not None:
            rest += wire[i + step:]
            break
    return message, rest


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 1 << 20])
def test_chunksDecodeAtAnyReadBoundary(step):
    """Message bytes (any bytes, including frame characters) come out whole however reads split the frames."""
    body = b"Subject: x\n\n" + bytes(range(256)) + b"0:,12:" * 50
    wire = encodeChunk(body[:100]) + encodeChunk(body[100:]) + MESSAGE_END + b"Fa@b\0Tc@d\0\0"
    assert decodeAll(wire, step) == (body, b"Fa@b\0Tc@d\0\0")


def test_emptyMessage():
    """The end chunk alone is an empty message; what follows is the envelope."""
    assert MessageDecoder().feed(MESSAGE_END + b"F") == ([], b"F")


def test_endChunkItsCommaInALaterRead():
    """The message is not over until the end chunk's comma has arrived."""
    decoder = MessageDecoder()
    assert decoder.feed(b"0:") == ([], None)
    assert decoder.feed(b",") == ([], b"")


def test_largestChunk():
    """A chunk of CHUNK_LIMIT bytes is accepted; one byte more is not encodable."""
    data = b"x" * CHUNK_LIMIT
    assert decodeAll(encodeChunk(data) + MESSAGE_END, 4096) == (data, b"")
    with pytest.raises(ValueError):
        encodeChunk(data + b"x")
    with pytest.raises(ValueError):
        encodeChunk(b"")


@pytest.mark.parametrize("wire", [
    b"%d:" % (CHUNK_LIMIT + 1),
    b"1234567:",
    b"12345678",
    b"x:",
    b":",
    b"01:a,",
    b"-1:",
    b"1:ab",
    b"3:abc;",
    b"0:;",
    b" 1:a,",
])
def test_badFramingRefused(wire):
    """Oversized, non-decimal, zero-padded or comma-less frames are framing errors (qmail-queue's 54)."""
    with pytest.raises(FramingError) as e:
        decodeAll(wire, 1)
    assert e.value.code == 54
    with pytest.raises(FramingError):
        MessageDecoder().feed(wire)


def test_headerNeverGrowsPastItsDigits():
    """A peer sending digits forever is refused after LENGTH_DIGITS+1 bytes, not buffered."""
    decoder = MessageDecoder()
    with pytest.raises(FramingError):
        for _ in range(100):
            decoder.feed(b"1")
    assert len(decoder._header) <= 7


def test_answers():
    """An answer is the decimal exit code and a newline; anything else is no answer."""
    assert encodeAnswer(0) == b"0\n"
    assert parseAnswer(encodeAnswer(91)) == 91
    assert parseAnswer(b"0\n") == 0
    for bad in (b"", b"0", b"x\n", b"1234\n", b"-1\n", b" 0\n"):
        assert parseAnswer(bad) is None


def test_receivedHow():
    """qmail-queue says 'by alias' for the alias user's uid, 'by uid N' for everyone else (root too)."""
    assert receivedHow(1000, 1001) == b"by uid 1000"
    assert receivedHow(1001, 1001) == b"by alias"
    assert receivedHow(0, 0) == b"by uid 0"
    assert receivedHow(5, None) == b"by uid 5"
