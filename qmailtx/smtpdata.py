"""
The SMTP DATA reader: strict transparency over a raw byte stream (spec/smtp.md §6).

Pure and incremental: chunks go in, converted message bytes (LF line ends, leading dots
removed) come out through a sink, and the reader says when C{<CR><LF>.<CR><LF>} ended the
message and which bytes after it belong to the command stream.  A bare LF or a bare CR
anywhere before the end is a framing error (qmail refuses bare LF; qmailtx also refuses
bare CR, which C{<CR>.<CR>} smuggling rides on).  Memory is bounded by L{PARTIAL_LINE_LIMIT}
whatever the line length.  Also counts hops (Received/Delivered header lines) and bytes.
No I/O, no Twisted.
"""

PARTIAL_LINE_LIMIT = 64 * 1024
"""A line longer than this is passed on in pieces instead of being held whole."""

HOP_LIMIT = 100
"""qmail-smtpd's MAXHOPS: this many Received/Delivered header lines mean a loop."""


class BareLineFeed(Exception):
    """A lone LF or CR inside DATA: qmail's 451 and a closed connection."""


class DataReader:
    """
    One message's DATA phase.

    @ivar size: converted bytes passed to the sink so far.
    @ivar hops: Received/Delivered lines seen in the header so far.
    """

    def __init__(self, sink):
        self._sink = sink
        self._carry = b""
        self._midLine = False
        self._inHeader = True
        self._headerLine = b""
        self.size = 0
        self.hops = 0

    def feed(self, data):
        """
        Consume C{data}.  Returns C{None} while the message goes on, or the bytes after
        the terminating dot once it has ended.  Raises L{BareLineFeed}.
        """
        buf = self._carry + data if self._carry else data
        prefix = b"" if self._midLine else b"\r\n"
        probe = prefix + buf
        end = probe.find(b"\r\n.\r\n")
        if end >= 0:
            self._emit(probe[len(prefix):end + 2], prefix)
            self._carry = b""
            return probe[end + 5:]
        lastLF = buf.rfind(b"\n")
        if lastLF >= 0:
            self._emit(buf[:lastLF + 1], prefix)
            self._midLine = False
            buf = buf[lastLF + 1:]
        cr = buf.find(b"\r")
        if 0 <= cr < len(buf) - 1:
            raise BareLineFeed()
        if len(buf) > PARTIAL_LINE_LIMIT:
            head, buf = buf[:-1], buf[-1:]
            if not self._midLine and head[:1] == b".":
                head = head[1:]
            self._midLine = True
            self._out(head)
        self._carry = buf
        return None

    def _emit(self, lines, prefix):
        """Convert complete CRLF lines (C{prefix} marks a line start before them)."""
        if not lines:
            return
        crlf = lines.count(b"\r\n")
        if lines.count(b"\n") != crlf or lines.count(b"\r") != crlf:
            raise BareLineFeed()
        text = (prefix + lines).replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n")
        self._out(text[1:] if prefix else text)

    def _out(self, text):
        if self._inHeader:
            self._countHops(text)
        self.size += len(text)
        self._sink(text)

    def _countHops(self, text):
        """Header lines (until the first empty one) starting C{received}/C{delivered}."""
        pos = 0
        n = len(text)
        while pos < n:
            nl = text.find(b"\n", pos)
            lineEnd = n if nl < 0 else nl
            if len(self._headerLine) < 9:
                self._headerLine += text[pos:min(lineEnd, pos + 9 - len(self._headerLine))]
            if nl < 0:
                return
            line = self._headerLine
            self._headerLine = b""
            if not line and nl == pos:
                self._inHeader = False
                return
            lower = line.lower()
            if lower[:8] == b"received" or lower[:9] == b"delivered":
                self.hops += 1
            pos = nl + 1
