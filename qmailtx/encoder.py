"""
The outbound message encoder (spec/remote.md §4 "Message encoding", DESIGN.md §2).

One streaming pass from a queue file to a connection: for SMTP every line break of the
stored message (LF, CR LF, or a lone CR) becomes CR LF, every line that starts with C{.}
gets one more C{.} (the first line and lines that start at a read boundary included), and
the data ends with C{.\\r\\n}; for QMTP the bytes go out as stored.  The output never
holds a lone CR or LF, so no C{<CR>.<CR>} or C{<LF>.<LF>} in a message can end it early.

Memory stays flat: L{MessageStreamer} is a pull producer reading L{CHUNK_SIZE} bytes at a
time, only when the transport has sent what it had.  Reads the queue file; writes nothing
on disk.  Must not import protocols or the queue.
"""

import os

from twisted.internet import defer

CHUNK_SIZE = 64 * 1024
"""Bytes read from the queue file per write to the connection (the producer's buffer)."""

PARTIAL_LINE = b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"


class PartialFinalLine(Exception):
    """The message does not end with a line break: SMTP cannot carry it (#5.6.2)."""


class SMTPEncoder:
    """
    The SMTP DATA transform as a state machine over chunks of any size.

    A CR at the end of a chunk is held back until the next chunk shows whether an LF
    follows it; whether the output is at a line start is carried across chunks, so a
    C{.} just after a read boundary is stuffed like any other.
    """

    def __init__(self):
        self._atLineStart = True
        self._heldCR = False

    def encode(self, chunk):
        """The encoded bytes for the next C{chunk} of the stored message."""
        if self._heldCR:
            chunk = b"\r" + chunk
            self._heldCR = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._heldCR = True
        if not chunk:
            return b""
        lines = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n.", b"\n..")
        if self._atLineStart and lines[:1] == b".":
            lines = b"." + lines
        self._atLineStart = lines.endswith(b"\n")
        return lines.replace(b"\n", b"\r\n")

    def finish(self):
        """
        The bytes that end the data (a held CR counts as a line break, as in notqmail).

        @raise PartialFinalLine: when the last line has no line break.
        """
        tail = b""
        if self._heldCR:
            self._heldCR = False
            self._atLineStart = True
            tail = b"\r\n"
        if not self._atLineStart:
            raise PartialFinalLine()
        return tail + b".\r\n"


def encodeMessage(data):
    """The whole SMTP DATA payload for C{data} in one call (for tests and small messages)."""
    encoder = SMTPEncoder()
    return encoder.encode(data) + encoder.finish()


class _Verbatim:
    """The QMTP transform: bytes as stored, nothing added."""

    def encode(self, chunk):
        return chunk

    def finish(self):
        return b""


def verbatim():
    return _Verbatim()


def hasPartialFinalLine(path):
    """
    Whether the stored message at C{path} ends without a line break (so SMTP would refuse
    it), read from its last byte alone.  An empty message has no final line.

    @raise OSError: when the file cannot be read (the caller reports #4.3.0).
    """
    with open(path, "rb") as f:
        return partialFinalLine(f)[0]


def partialFinalLine(messageFile):
    """
    L{hasPartialFinalLine} for an open file, without moving its position: C{(partial,
    size)}, so the caller that goes on to send the file opens and stats it once.

    @raise OSError: when the file cannot be read.
    """
    size = os.fstat(messageFile.fileno()).st_size
    if size == 0:
        return False, 0
    return os.pread(messageFile.fileno(), 1, size - 1) not in (b"\n", b"\r"), size


class MessageStreamer:
    """
    A pull producer copying one open queue file through a transform to a consumer.

    A message shorter than one chunk goes out in a single write without registering a
    producer (the common case, one write per message; with C{size}, the file's length from
    the caller's fstat, without a second read to find its end); a larger one is written a
    chunk at a time as the consumer asks for more.

    @ivar done: fires with C{None} when everything, C{trailer} included, has been written;
        fails with L{PartialFinalLine}, the read error, or L{StreamStopped}.
    """

    def __init__(self, messageFile, consumer, transform, trailer=b"", chunkSize=CHUNK_SIZE,
                 progress=None, size=None):
        self._file = messageFile
        self._size = size
        self._consumer = consumer
        self._transform = transform
        self._trailer = trailer
        self._chunkSize = chunkSize
        self._progress = progress
        self._registered = False
        self._finished = False
        self.done = defer.Deferred()

    def start(self):
        """Write the first chunk now; register as a pull producer if more remains."""
        first = self._read()
        if first is None:
            return self.done
        if len(first) < self._chunkSize:
            if self._size is not None and len(first) == self._size:
                self._write(first, last=True)
                return self.done
            rest = self._read()
            if rest is None:
                return self.done
            if not rest:
                self._write(first, last=True)
                return self.done
            first += rest
        self._write(first, last=False)
        if not self._finished:
            self._registered = True
            self._consumer.registerProducer(self, False)
        return self.done

    def _read(self):
        try:
            return self._file.read(self._chunkSize)
        except OSError as e:
            self._fail(e)
            return None

    def _write(self, chunk, last):
        try:
            data = self._transform.encode(chunk)
            if last:
                data += self._transform.finish() + self._trailer
        except PartialFinalLine as e:
            self._fail(e)
            return
        if data:
            self._consumer.write(data)
        if self._progress is not None:
            self._progress()
        if last:
            self._end(None)

    def resumeProducing(self):
        if self._finished:
            return
        chunk = self._read()
        if chunk is None:
            return
        self._write(chunk, last=not chunk)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        self._fail(StreamStopped())

    def _fail(self, reason):
        self._end(reason)

    def _end(self, reason):
        if self._finished:
            return
        self._finished = True
        if self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
        if reason is None:
            self.done.callback(None)
        else:
            self.done.errback(reason)


class StreamStopped(Exception):
    """The consumer went away (connection lost) before the message was written."""
