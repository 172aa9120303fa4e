"""
The queue socket's wire format (L{qmailtx.queuesocket}): bytes in, bytes out.

A client sends what qmail-queue would read: first the message (its fd 0) as chunks
C{<length>:<bytes>,} of 1 to L{CHUNK_LIMIT} bytes, ended by the empty chunk C{0:,}; then the
envelope (its fd 1) unchanged, C{F<sender>\\0T<recipient>\\0...\\0}.  The daemon answers once,
with qmail-queue's exit code in decimal and C{\\n} (L{encodeAnswer}), and closes.  Chunks
let the message be any bytes and its end be known without closing the connection; the
envelope frames itself.  Pure: no I/O, no Twisted.
"""

CHUNK_LIMIT = 64 * 1024
"""Largest message chunk; the decoder never holds more than one chunk header besides."""
LENGTH_DIGITS = len(str(CHUNK_LIMIT))
MESSAGE_END = b"0:,"
ANSWER_LIMIT = 8
"""Longest answer line a client reads (a code of at most three digits and C{\\n})."""


class FramingError(Exception):
    """The message chunks are malformed; qmail-queue's nearest exit is 54 (read error)."""

    code = 54


def encodeChunk(data):
    """One message chunk (C{data} of 1 to L{CHUNK_LIMIT} bytes) with its frame."""
    if not 0 < len(data) <= CHUNK_LIMIT:
        raise ValueError("chunk of %d bytes" % len(data))
    return b"%d:%s," % (len(data), data)


def encodeAnswer(code):
    return b"%d\n" % code


def parseAnswer(data):
    """The exit code in an answer, or C{None} if C{data} is not a whole answer line."""
    line, newline, _ = data.partition(b"\n")
    if not newline or not line.isdigit() or len(line) > 3:
        return None
    return int(line)


class MessageDecoder:
    """
    Incremental decoder of the message chunks.  L{feed} hands back message bytes as they
    arrive (slices of its input, never gathered), so memory is bounded by the caller's
    reads, not by the message.

    @ivar done: C{True} once the end chunk was seen.
    """

    def __init__(self):
        self.done = False
        self._header = b""
        self._left = 0
        self._needComma = False

    def feed(self, data):
        """
        Consume C{data}: returns C{(pieces, rest)}, C{pieces} the message bytes it held and
        C{rest} the bytes after the end chunk (the envelope's start) or C{None} if the
        message goes on.  Raises L{FramingError}.
        """
        pieces = []
        view = memoryview(data)
        while view:
            if self._left:
                piece = view[:self._left]
                pieces.append(piece)
                self._left -= len(piece)
                view = view[len(piece):]
                if not self._left:
                    self._needComma = True
                continue
            if self._needComma:
                if view[0] != 0x2C:
                    raise FramingError()
                self._needComma = False
                view = view[1:]
                if self.done:
                    return pieces, bytes(view)
                continue
            colon = bytes(view[:LENGTH_DIGITS + 1]).find(b":")
            if colon == -1:
                self._header += bytes(view[:LENGTH_DIGITS + 1])
                view = view[len(view):]
                if len(self._header) > LENGTH_DIGITS or not self._header.isdigit():
                    raise FramingError()
                continue
            header, self._header = self._header + bytes(view[:colon]), b""
            view = view[colon + 1:]
            if not header.isdigit() or len(header) > LENGTH_DIGITS or (
                    header[:1] == b"0" and header != b"0"):
                raise FramingError()
            length = int(header)
            if length > CHUNK_LIMIT:
                raise FramingError()
            if length == 0:
                self.done = True
                self._needComma = True
            else:
                self._left = length
        if self.done and not self._needComma:
            return pieces, b""
        return pieces, None


def receivedHow(uid, aliasUid):
    """
    The C{invoked ...} words of the Received line for a client of uid C{uid}: qmail-queue
    says C{by alias} for the alias user (C{aliasUid}, the owner of C{alias/}; C{None} if
    unknown), else C{by uid N}.
    """
    if aliasUid is not None and uid == aliasUid and uid != 0:
        return b"by alias"
    return b"by uid %d" % uid
