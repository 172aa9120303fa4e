"""The strict DATA reader (spec/smtp.md §6.1, qmailtx's bare-CR decision)."""

import random

import pytest

from qmailtx.smtpdata import PARTIAL_LINE_LIMIT, BareLineFeed, DataReader


def read(chunks):
    out = []
    reader = DataReader(out.append)
    for i, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if rest is not None:
            return b"".join(out), rest + b"".join(chunks[i + 1:]), reader
    return b"".join(out), None, reader


def test_simple_message():
    """CRLF lines become LF lines; the dot line ends the message; the rest is returned."""
    msg, rest, _ = read([b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"])
    assert msg == b"Subject: x\n\nbody\n"
    assert rest == b"QUIT\r\n"


def test_empty_message():
    """The first line may be the dot: an empty message."""
    assert read([b".\r\n"])[:2] == (b"", b"")


def test_dot_unstuffing():
    """A leading dot is removed once, also on the first line."""
    msg, rest, _ = read([b".first\r\n..second\r\n...\r\n.\r\n"])
    assert msg == b"first\n.second\n..\n"


@pytest.mark.parametrize("split", range(1, 30))
def test_any_chunking(split):
    """The result does not depend on where the stream is cut."""
    data = b"..a\r\nb\r\n\r\n..\r\nx.\r\n.\r\nNOOP\r\n"
    msg, rest, _ = read([data[:split], data[split:]])
    assert (msg, rest) == (b".a\nb\n\n.\nx.\n", b"NOOP\r\n")


@pytest.mark.parametrize("payload", [
    b"a\n.\nMAIL FROM:<x>\r\n",
    b"a\r\n.\nRCPT TO:<x>\r\n",
    b"a\n.\r\nRCPT TO:<x>\r\n",
    b"a\r.\rRCPT TO:<x>\r\n",
    b"a\rb\r\n",
    b"bare\nlf\r\n",
])
def test_smuggling_vectors_are_framing_errors(payload):
    """<LF>.<LF>, <CR><LF>.<LF>, <LF>.<CR><LF>, <CR>.<CR>, bare CR/LF: never an end, always an error."""
    with pytest.raises(BareLineFeed):
        read([payload + b".\r\n"])


def test_bare_cr_detected_before_line_end():
    """A CR followed by anything but LF is refused as soon as it is seen."""
    with pytest.raises(BareLineFeed):
        DataReader(lambda t: None).feed(b"abc\rdef")


def test_cr_at_chunk_end_waits_for_lf():
    """A CR at the end of a chunk is not judged until the next byte arrives."""
    msg, rest, _ = read([b"abc\r", b"\n.\r", b"\n"])
    assert (msg, rest) == (b"abc\n", b"")


def test_long_line_bounded_memory():
    """A line far longer than the partial-line limit streams out in pieces."""
    out = []
    reader = DataReader(out.append)
    chunk = b"x" * 8192
    for _ in range(100):
        assert reader.feed(chunk) is None
        assert len(reader._carry) <= PARTIAL_LINE_LIMIT + len(chunk)
    assert reader.feed(b"\r\n.\r\n") == b""
    assert b"".join(out) == b"x" * 819200 + b"\n"


def test_long_line_leading_dot_removed_once():
    """A long line starting with a dot loses exactly that dot."""
    out = []
    reader = DataReader(out.append)
    reader.feed(b"..." + b"y" * (PARTIAL_LINE_LIMIT + 10))
    reader.feed(b"\r\n.\r\n")
    assert b"".join(out) == b".." + b"y" * (PARTIAL_LINE_LIMIT + 10) + b"\n"


def test_hop_count():
    """Received/Delivered header lines count, any case, no colon needed; body lines don't."""
    header = b"Received: a\r\nDELIVERED-To: b\r\nreceived-spf: c\r\nreceivedx\r\nX-Received: no\r\n"
    _, _, reader = read([header + b"\r\nReceived: body\r\n.\r\n"])
    assert reader.hops == 4


def test_hop_count_across_chunks():
    """A header line cut in the middle of its first word still counts."""
    data = b"Rece" + b"ived: a\r\nDeli" + b"vered-To: b\r\n\r\n.\r\n"
    _, _, reader = read([data[:4], data[4:15], data[15:]])
    assert reader.hops == 2


def test_size_counts_converted_bytes():
    """size is the stored (LF, unstuffed) length."""
    _, _, reader = read([b"..ab\r\ncd\r\n.\r\n"])
    assert reader.size == len(b".ab\ncd\n")


def test_random_messages_roundtrip():
    """Dot-stuffed CRLF encodings of random LF messages decode back exactly."""
    rng = random.Random(5)
    for _ in range(200):
        lines = [bytes(rng.choice(b".ab \t") for _ in range(rng.randrange(0, 6)))
                 for _ in range(rng.randrange(0, 8))]
        stored = b"".join(l + b"\n" for l in lines)
        wire = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines) + b".\r\n"
        cut = sorted(rng.randrange(0, len(wire) + 1) for _ in range(3))
        chunks = [wire[:cut[0]], wire[cut[0]:cut[1]], wire[cut[1]:cut[2]], wire[cut[2]:]]
        msg, rest, _ = read(chunks)
        assert (msg, rest) == (stored, b"")
