"""
Netstrings (spec/qmqp-qmtp.md §1): an encoder and an incremental, streaming decoder.

The decoder never holds a payload: it hands payload bytes on as they arrive, so a
200 MB QMTP message costs no more memory than one read.  Its own state is a length and a
few digits.  Syntax is checked the way qmail's parsers check it (leading zeros and an
empty length are tolerated, as qmail-qmtpd/qmail-qmqpd do), plus qmailtx's rule that every
netstring, nested ones included, is checked for non-digits.

Pure: bytes in, events out; no I/O, no Twisted, writes nothing.
"""

MAX_LENGTH = 200000000
"""qmail's getlen(): a length above this is a resource error (qmail exits 111)."""

LENGTH = "length"
DATA = "data"
END = "end"


class NetstringError(ValueError):
    """Bad netstring syntax: a protocol error (qmail exits 100 and closes)."""

    temporary = False


class NetstringLengthError(NetstringError):
    """A length above the limit: a resource error (qmail exits 111 and closes)."""

    temporary = True


def encode(data):
    """C{b"hello"} ⇒ C{b"5:hello,"}."""
    return b"%d:%s," % (len(data), data)


def encodeList(items):
    """The concatenation of the netstrings of C{items} (QMTP's recipient list payload)."""
    return b"".join(b"%d:%s," % (len(item), item) for item in items)


def decode(data, maxLength=MAX_LENGTH):
    """
    Split one complete netstring off C{data}: C{(payload, rest)}.

    @raise NetstringError: on bad syntax or when C{data} ends before the netstring does
        (callers that hold only a prefix should use L{NetstringDecoder}).
    """
    decoder = NetstringDecoder(maxLength)
    decoder.stopAfterEnd = True
    payload = []
    for kind, value in decoder.feed(data):
        if kind == DATA:
            payload.append(value)
        elif kind == END:
            return b"".join(payload), data[decoder.consumed:]
    raise NetstringError("truncated netstring")


def decodeAll(data, maxLength=MAX_LENGTH):
    """Every netstring in C{data}, which must hold nothing else."""
    items = []
    while data:
        item, data = decode(data, maxLength)
        items.append(item)
    return items


_DIGITS = 10
"""The most digits a length under L{MAX_LENGTH} can need (plus one to see it overflow)."""


class NetstringDecoder:
    """
    Incremental decoder for a sequence of netstrings.

    L{feed} returns events: C{(LENGTH, n)} once a header is read, C{(DATA, chunk)} for
    payload bytes (chunks concatenate to the payload; none for an empty one), and
    C{(END, None)} once the comma is read.  After an error the decoder is dead.

    @ivar bound: if not C{None}, the bytes this decoder may still consume; a netstring that
        would not fit in it is a syntax error as soon as its length is known (how a netstring
        nested in another is kept inside its container: qmail-qmtpd's C{len >= biglen}).
    @ivar consumed: bytes used from the last L{feed} argument; on a stop (see L{stopAfterEnd})
        the rest of that argument is not this decoder's.
    @ivar stopAfterEnd: if true, L{feed} returns right after an C{END} event, leaving the
        rest of its input unread (the caller decides whether another netstring follows).
    """

    def __init__(self, maxLength=MAX_LENGTH, bound=None):
        self.maxLength = maxLength
        self.bound = bound
        self.consumed = 0
        self.stopAfterEnd = False
        self._state = 0  # 0 header, 1 payload, 2 comma
        self._length = 0
        self._digits = 0
        self._left = 0

    @property
    def atBoundary(self):
        """True between netstrings (nothing of a next one read yet)."""
        return self._state == 0 and self._digits == 0

    @property
    def remaining(self):
        """Payload bytes still to come in the current netstring (0 outside a payload)."""
        return self._left if self._state == 1 else 0

    def feed(self, data):
        """Decode as much of C{data} as possible; see the class docstring for events."""
        events = []
        pos = 0
        end = len(data)
        if self.bound is not None and end > self.bound:
            end = self.bound
        while pos < end:
            state = self._state
            if state == 0:
                colon = data.find(b":", pos, end)
                stop = end if colon < 0 else colon
                digits = data[pos:stop]
                if digits and not digits.isdigit():
                    raise NetstringError("non-digit in netstring length")
                self._digits += len(digits)
                if digits:
                    if self._digits > _DIGITS:
                        raise NetstringLengthError("netstring length too large")
                    self._length = self._length * 10 ** len(digits) + int(digits)
                    if self._length > self.maxLength:
                        raise NetstringLengthError("netstring length too large")
                if colon < 0:
                    pos = end
                    break
                pos = colon + 1
                length = self._length
                if self.bound is not None and length + 1 > self.bound - pos:
                    raise NetstringError("netstring longer than its container")
                self._length = 0
                self._digits = 0
                self._left = length
                self._state = 1 if length else 2
                events.append((LENGTH, length))
            elif state == 1:
                take = min(self._left, end - pos)
                events.append((DATA, data[pos:pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    self._state = 2
            else:
                if data[pos] != 44:
                    raise NetstringError("missing comma after netstring")
                pos += 1
                self._state = 0
                events.append((END, None))
                if self.stopAfterEnd:
                    break
        if self.bound is not None:
            self.bound -= pos
        self.consumed = pos
        return events
