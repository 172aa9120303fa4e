"""
The outbound SMTP encoder (spec/remote.md §4): line breaks, dot-stuffing at every line
start whatever the chunking, the final dot, and partial final lines.
"""

import io
import random

import pytest

from qmailtx.encoder import (
    CHUNK_SIZE, MessageStreamer, PartialFinalLine, SMTPEncoder, encodeMessage, partialFinalLine,
    hasPartialFinalLine, verbatim)


def encodeInChunks(data, sizes):
    encoder = SMTPEncoder()
    out = []
    pos = 0
    for size in sizes:
        out.append(encoder.encode(data[pos:pos + size]))
        pos += size
    out.append(encoder.encode(data[pos:]))
    return b"".join(out) + encoder.finish()


def unstuff(wire):
    """What an RFC 5321 receiver stores: lines up to the lone dot, leading dot removed."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire.split(b"\r\n")[:-2]
    return b"".join((l[1:] if l.startswith(b".") else l) + b"\n" for l in lines)


def test_lfBecomesCRLFAndEndsWithDot():
    """Each LF becomes CRLF and the data ends with C{.CRLF}."""
    assert encodeMessage(b"a\nb\n") == b"a\r\nb\r\n.\r\n"


def test_emptyMessage():
    """An empty message is just the final dot (qmail-remote sends no lines)."""
    assert encodeMessage(b"") == b".\r\n"


def test_firstLineDot():
    """A first line starting with a dot is stuffed too."""
    assert encodeMessage(b".\nx\n") == b"..\r\nx\r\n.\r\n"


def test_existingCRLFKeptSingle():
    """An existing CRLF is one CRLF, not CR CR LF (notqmail 1.09)."""
    assert encodeMessage(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"


def test_loneCRIsALineBreakAndStuffed():
    """A lone CR becomes CRLF, and the line after it is dot-stuffed (no CR.CR smuggling)."""
    assert encodeMessage(b"a\r.\rb\n") == b"a\r\n..\r\nb\r\n.\r\n"


def test_lfDotLf():
    """A lone dot line in the body is doubled, never ends the data."""
    assert encodeMessage(b"a\n.\nMAIL FROM:<x>\n") == b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"


def test_partialFinalLine():
    """A final line without LF is refused (#5.6.2)."""
    with pytest.raises(PartialFinalLine):
        encodeMessage(b"a\nb")


def test_finalLoneCRIsALineEnd():
    """A message ending in a lone CR ends with a line break, as notqmail treats it."""
    assert encodeMessage(b"a\r") == b"a\r\n.\r\n"


@pytest.mark.parametrize("data", [
    b".a\n.\n..\n\r.\r\n.\r\n", b"x\r\r\n.\n", b"\r\n.\r\r.\n", b"...\n" * 50,
    b"a\n" * 9 + b".\n" + b"\r" * 5 + b"\n",
])
def test_chunkBoundariesChangeNothing(data):
    """Splitting the input at every possible point yields the same output (state carried)."""
    whole = encodeMessage(data)
    for cut in range(len(data) + 1):
        assert encodeInChunks(data, [cut]) == whole
    assert encodeInChunks(data, [1] * len(data)) == whole


def test_randomNeverLoneCRorLF():
    """
    For random messages of CR, LF, dot and letters, output has no lone CR or LF, every
    line starting with a dot is stuffed, and unstuffing gives the input with every line
    break as LF.
    """
    rng = random.Random(4)
    for _ in range(300):
        data = bytes(rng.choice(b"\r\n.a") for _ in range(rng.randrange(0, 40))) + b"\n"
        sizes = [rng.randrange(1, 5) for _ in range(10)]
        wire = encodeInChunks(data, sizes)
        assert wire == encodeMessage(data)
        body = wire.replace(b"\r\n", b"")
        assert b"\r" not in body and b"\n" not in body
        canonical = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        assert unstuff(wire) == canonical


def test_hasPartialFinalLine(tmp_path):
    """The last byte alone decides: LF or CR ends a line; empty has no final line."""
    p = tmp_path / "m"
    for data, partial in [(b"", False), (b"a\n", False), (b"a\r", False), (b"a", True)]:
        p.write_bytes(data)
        assert hasPartialFinalLine(str(p)) is partial


class Consumer:
    def __init__(self):
        self.data = []
        self.producer = None

    def write(self, data):
        self.data.append(data)

    def registerProducer(self, producer, streaming):
        assert not streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def test_streamerSmallMessageOneWrite():
    """A message under one chunk is written in one piece with the trailer, no producer."""
    c = Consumer()
    done = MessageStreamer(io.BytesIO(b"a\n.\n"), c, SMTPEncoder()).start()
    assert c.data == [b"a\r\n..\r\n.\r\n"] and c.producer is None
    assert done.called


def test_streamerLargeMessageChunked():
    """
    A large message goes out one chunk per resumeProducing, byte-identical to the one-shot
    encoding, with a lone dot exactly at a chunk boundary stuffed.
    """
    data = b"x" * (CHUNK_SIZE - 1) + b"\n.\n" + b"y\n" * 40000
    c = Consumer()
    done = MessageStreamer(io.BytesIO(data), c, SMTPEncoder()).start()
    steps = 0
    while c.producer is not None:
        c.producer.resumeProducing()
        steps += 1
    assert steps > 1 and done.called
    assert b"".join(c.data) == encodeMessage(data)
    assert max(len(d) for d in c.data) <= 2 * CHUNK_SIZE + 16


def test_streamerPartialFails():
    """A partial final line fails the stream instead of writing the final dot."""
    c = Consumer()
    done = MessageStreamer(io.BytesIO(b"abc"), c, SMTPEncoder()).start()
    failures = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(PartialFinalLine)
    assert b"".join(c.data) == b""


def test_streamerVerbatimTrailer():
    """The QMTP transform writes bytes as stored, then the trailer."""
    c = Consumer()
    MessageStreamer(io.BytesIO(b"a\r.\r"), c, verbatim(), trailer=b",").start()
    assert b"".join(c.data) == b"a\r.\r,"


class CountingReads(io.BytesIO):
    reads = 0

    def read(self, n=-1):
        self.reads += 1
        return io.BytesIO.read(self, n)


def test_streamerKnownSizeOneRead():
    """Told the file's size, a small message is sent after one read (no read to find EOF)."""
    for size in (True, False):
        f, c = CountingReads(b"a\n.\n"), Consumer()
        MessageStreamer(f, c, SMTPEncoder(), size=4 if size else None).start()
        assert c.data == [b"a\r\n..\r\n.\r\n"]
        assert f.reads == (1 if size else 2)


def test_partialFinalLineKeepsPosition(tmp_path):
    """On an open file: (partial, size) from the last byte, the read position untouched."""
    p = tmp_path / "m"
    for data, partial in [(b"", False), (b"a\n", False), (b"a\r", False), (b"ab", True)]:
        p.write_bytes(data)
        with open(p, "rb") as f:
            assert partialFinalLine(f) == (partial, len(data))
            assert f.tell() == 0
