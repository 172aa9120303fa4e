"""
qmail's envelope and queue-record encodings (spec/queue.md §1–3): bytes in, bytes out.

The envelope a queue program reads on fd 1 (C{F<sender>\\0}, C{T<recipient>\\0}..., then
C{\\0}), the C{u<uid>\\0p<pid>\\0} header that C{intd/} and C{todo/} files start with, the
record lists of C{todo/}, C{info/}, C{local/}, C{remote/}, and the queue program's own
C{Received:} line.  Pure: no I/O, no Twisted.
"""

import time

ADDRESS_LIMIT = 1002
"""Longest envelope address qmail-queue accepts (its C{ADDR} 1003 includes the C{\\0})."""

EXIT_TOO_LONG = 11
EXIT_READ = 54
EXIT_FORMAT = 91


class EnvelopeError(Exception):
    """
    The envelope is unusable; C{code} is qmail-queue's exit code for it: 11 (address too
    long), 54 (ended before the final C{\\0}) or 91 (format error).
    """

    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def encodeEnvelope(sender, recipients):
    """
    The fd-1 envelope for C{sender} and C{recipients}.  Raises L{EnvelopeError}(11) for
    an address over L{ADDRESS_LIMIT}, (91) for one holding a C{\\0} (it cannot be framed).
    """
    parts = [b"F", _checked(sender), b"\0"]
    for recipient in recipients:
        parts += [b"T", _checked(recipient), b"\0"]
    parts.append(b"\0")
    return b"".join(parts)


def _checked(address):
    if len(address) > ADDRESS_LIMIT:
        raise EnvelopeError(EXIT_TOO_LONG)
    if b"\0" in address:
        raise EnvelopeError(EXIT_FORMAT)
    return address


def encodeTodoHeader(uid, pid):
    """The C{u<uid>\\0p<pid>\\0} header qmail-queue writes first into C{intd/<id>}."""
    return b"u%d\0p%d\0" % (uid, pid)


def encodeTodo(uid, pid, sender, recipients):
    """
    A whole C{todo/<id>} file: the header, C{F<sender>\\0}, C{T<rcpt>\\0}...; unlike
    the fd-1 envelope it has no extra final C{\\0}.
    """
    return encodeTodoHeader(uid, pid) + encodeEnvelope(sender, recipients)[:-1]


def parseRecords(data):
    """
    Split a queue file made of C{<letter><value>\\0} records (todo, info, local, remote)
    into C{(letter, value)} byte pairs.  A last record without its C{\\0} (a file cut
    short) is dropped, as qmail's readers ignore it.
    """
    records = []
    for raw in data.split(b"\0")[:-1]:
        if raw:
            records.append((raw[:1], raw[1:]))
    return records


class EnvelopeReader:
    """
    Incremental parser of the fd-1 envelope, so a reader needs neither the whole input
    nor to wait for EOF: it stops at the final C{\\0} as qmail-queue does.  Memory is
    bounded by L{ADDRESS_LIMIT} per address plus the addresses kept.

    @ivar sender: the sender once parsed, else C{None}.
    @ivar recipients: recipients parsed so far.
    @ivar done: C{True} once the final C{\\0} was seen; later bytes are ignored.
    """

    def __init__(self):
        self.sender = None
        self.recipients = []
        self.done = False
        self._pending = b""
        self._started = False

    def feed(self, data):
        """
        Consume C{data}; return C{True} once the envelope is complete.  Raises
        L{EnvelopeError}(91 or 11) as soon as the input is known to be bad.
        """
        if self.done:
            return True
        buf = self._pending + data
        pos = 0
        while pos < len(buf):
            if not self._started:
                letter = buf[pos:pos + 1]
                if self.sender is None:
                    if letter != b"F":
                        raise EnvelopeError(EXIT_FORMAT)
                elif letter == b"\0":
                    self.done = True
                    self._pending = b""
                    return True
                elif letter != b"T":
                    raise EnvelopeError(EXIT_FORMAT)
                self._started = True
                pos += 1
                continue
            end = buf.find(b"\0", pos)
            if end == -1:
                if len(buf) - pos > ADDRESS_LIMIT:
                    raise EnvelopeError(EXIT_TOO_LONG)
                self._pending = buf[pos:]
                return False
            if end - pos > ADDRESS_LIMIT:
                raise EnvelopeError(EXIT_TOO_LONG)
            address = buf[pos:end]
            if self.sender is None:
                self.sender = address
            else:
                self.recipients.append(address)
            self._started = False
            pos = end + 1
        self._pending = b""
        return False

    def finish(self):
        """At EOF: return C{(sender, recipients)}, or raise L{EnvelopeError}(54) if cut short."""
        if not self.done:
            raise EnvelopeError(EXIT_READ)
        return self.sender, self.recipients


def parseEnvelope(data):
    """A whole fd-1 envelope to C{(sender, recipients)}; raises L{EnvelopeError}."""
    reader = EnvelopeReader()
    reader.feed(data)
    return reader.finish()


_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def date822(seconds):
    """qmail's C{date822fmt}: C{21 Nov 2024 19:26:00 -0000}, UTC, day not padded."""
    t = time.gmtime(seconds)
    return b"%d %s %d %02d:%02d:%02d -0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def receivedLine(qp, how, seconds):
    """
    The line a queue program puts first: C{Received: (qmail <qp> invoked <how>); <date>\\n},
    C{how} being C{b"from network"}, C{b"for bounce"}, C{b"by alias"} or C{b"by uid N"}.
    """
    return b"Received: (qmail %d invoked %s); %s\n" % (qp, how, date822(seconds))
