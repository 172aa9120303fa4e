"""
qmail-pop3d's RETR/TOP encoding (spec/pop3.md §3 "Message transmission"), as a pure streaming encoder.
"""

import pytest

from qmailtx.pop3d import Transmitter


def encode(data, bodyLines=None, chunk=None):
    t = Transmitter(bodyLines)
    if chunk is None:
        out = t.feed(data)
    else:
        out = b"".join(t.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    return out + t.finish()


MSG = b"A: 1\nB: 2\n\n.dot\nl2\nl3\n"


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
def test_retr(chunk):
    """RETR: LF→CRLF, leading dot doubled, one extra empty line, then '.' — at any chunking."""
    assert encode(MSG, chunk=chunk) == b"A: 1\r\nB: 2\r\n\r\n..dot\r\nl2\r\nl3\r\n\r\n.\r\n"


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_retrNoFinalNewline(chunk):
    """A last line without LF still gets CRLF; a CR before LF is kept as content."""
    assert encode(b".a\r\nb", chunk=chunk) == b"..a\r\r\nb\r\n\r\n.\r\n"


def test_retrEmpty():
    """An empty file sends only the extra empty line and the terminator."""
    assert encode(b"") == b"\r\n.\r\n"


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_top(chunk):
    """TOP n l: header, blank line, first l body lines (dots doubled), extra empty line, '.'."""
    assert encode(MSG, 0, chunk) == b"A: 1\r\nB: 2\r\n\r\n\r\n.\r\n"
    assert encode(MSG, 2, chunk) == b"A: 1\r\nB: 2\r\n\r\n..dot\r\nl2\r\n\r\n.\r\n"
    assert encode(MSG, 99, chunk) == encode(MSG)


def test_topNoFinalNewline():
    """TOP counts a last line without LF as a line."""
    assert encode(b"H\n\nx\ny", 5) == b"H\r\n\r\nx\r\ny\r\n\r\n.\r\n"
    assert encode(b"H\n\nx\ny", 1) == b"H\r\n\r\nx\r\n\r\n.\r\n"


def test_topStreamsALongLine():
    """
    TOP sends a line's bytes as they come, keeping nothing back: a message of one 64 MB
    line once cost 32 s of CPU, each 64 KB chunk re-copying the line read so far.
    """
    t = Transmitter(1)
    assert t.feed(b"H: 1\n\n.x") == b"H: 1\r\n\r\n..x"
    chunk = b"y" * 65536
    assert t.feed(chunk) == chunk
    assert t.feed(b"y\nnot sent\n") == b"y\r\n"
    assert t.done and t.finish() == b"\r\n.\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_topAtAnyChunking(chunk):
    """TOP's line counting, header end and dot doubling hold wherever the chunks split."""
    msg = b"A: 1\n.B: 2\n\n.dot\n\n..x\nl4\n.\ntail"
    for lines in (0, 1, 2, 3, 4, 5, 6, 7, 99):
        assert encode(msg, lines, chunk) == encode(msg, lines), lines
    assert encode(msg, 4) == b"A: 1\r\n..B: 2\r\n\r\n..dot\r\n\r\n...x\r\nl4\r\n\r\n.\r\n"
    assert encode(msg, 99) == encode(msg)
