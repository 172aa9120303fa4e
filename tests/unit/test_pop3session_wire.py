"""
The frames between the daemon and a L{qmailtx.scripts.pop3session} worker: netstring frames
decoded incrementally in any chunking, and the listing encoding.
"""

import pytest

from qmailtx.scripts import pop3session as wire


def frames(data, step):
    decoder = wire.FrameDecoder()
    out = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    return out, decoder


@pytest.mark.parametrize("step", [1, 2, 3, 7, 8192, 1 << 20])
def test_framesInAnyChunking(step):
    """Small, empty and multi-megabyte frames come out whole and in order however the pipe splits them."""
    sent = [b"", b"a", b"x" * 100, bytes(range(256)) * 4, b"L" * 3000000, b"," , b"12:"]
    if step == 1:
        sent[4] = b"L" * 30000
    data = b"".join(wire.netstring(f) for f in sent)
    out, decoder = frames(data, step)
    assert out == sent
    assert decoder.feed(b"") == []


def test_partialFrameWaits():
    """A frame missing its last byte (the comma) is not returned until it arrives."""
    decoder = wire.FrameDecoder()
    assert decoder.feed(b"5:hello") == []
    assert decoder.feed(b",3:ab") == [b"hello"]
    assert decoder.feed(b"c,") == [b"abc"]


@pytest.mark.parametrize("bad", [b"x:", b"12a:", b"1234567890123", b"3:abc;", b"-1:",
                                 b"%d:" % (wire.FRAME_LIMIT + 1)])
def test_badFrames(bad):
    """A header that is not digits, too long, too large, or a frame without its comma is an error."""
    with pytest.raises(ValueError):
        frames(bad + b"x" * 8, 3)


def test_listingRoundTrip():
    """A listing survives encoding, including names with spaces and high bytes, and the empty one."""
    listing = [(b"new/1.M1P1Q1.h,S=5", 5), (b"cur/a b\xff:2,S", 0), (b"cur/x", 123456789)]
    encoded = wire.encodeListing(listing)
    assert encoded == b"".join(b"%s\0%d\0" % m for m in listing)
    assert wire.decodeListing(encoded) == listing
    assert wire.encodeListing([]) == b""
    assert wire.decodeListing(b"") == []
