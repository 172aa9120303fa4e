"""
qmail-inject's message preparation (spec/tools.md §1): address qualification
(defaulthost, defaultdomain, plusdomain), header rewriting, the generated
Date/Message-ID/From/Cc/Mail-Followup-To fields, envelope sender and recipient choice
(C{-a -A -h -H}) and the C{QMAILINJECT} letters.  Tokens come from L{qmailtx.token822}.

Pure: bytes in, bytes out; the caller reads stdin, control files and the environment and
runs the queue program.  Writes nothing; must not import the queue, Twisted or sockets.
"""

import time

from qmailtx.envelope import date822
from qmailtx.token822 import (
    AT, ATOM, COLON, COMMENT, DOT, LEFT, LITERAL, QUOTE, RIGHT, addressList, needsQuote,
    quoteAddress, tokenize, unparse, unquote)

HEADER_LIMIT = 16 * 1024 * 1024
"""Bytes of header held while it is rewritten (qmail-inject's own limit is memory)."""


class InjectError(Exception):
    """qmail-inject stops: C{text} follows C{qmail-inject: fatal: }; C{code} is 100 or 111."""

    def __init__(self, text, code=100):
        Exception.__init__(self, text)
        self.text = text
        self.code = code


class Qualifier:
    """
    qmail-inject's rwgeneric: strip source routes and stray trailing dots and ats, add
    C{@defaulthost} to a bare local part, turn a trailing C{+} into C{.plusdomain},
    add C{.defaultdomain} to a dotless host.  C{<>} and C{<x@[]>} stay as they are.
    """

    def __init__(self, defaultHost, defaultDomain, plusDomain):
        self.host = self._parse(b"@" + defaultHost)
        self.domain = self._parse(b"." + defaultDomain)
        self.plus = self._parse(b"." + plusDomain)

    @staticmethod
    def _parse(text):
        tokens = tokenize(text)
        if tokens is None:
            raise InjectError(b"unable to parse this line:\n" + text)
        return tokens

    def __call__(self, tokens):
        t = list(tokens)
        if not t or (len(t) >= 2 and t[-1] == (LITERAL, b"") and t[-2][0] == AT):
            return t
        if t[0][0] == AT:
            colon = next((i for i, tok in enumerate(t) if tok[0] == COLON), len(t))
            t = t[colon + 1:]
        for stray in (DOT, AT):
            if t and t[-1][0] == stray:
                t.pop()
        if not t:
            return t
        if not any(kind == AT for kind, _ in t):
            t += self.host
        last = t[-1]
        if last[0] == ATOM and last[1].endswith(b"+"):
            t[-1] = (ATOM, last[1][:-1])
            t += self.plus
        for kind, _ in reversed(t):
            if kind in (DOT, LITERAL):
                return t
            if kind == AT:
                break
        return t + self.domain


_KNOWN = (b"sender", b"from", b"reply-to", b"to", b"cc", b"bcc", b"date", b"message-id",
          b"subject", b"resent-sender", b"resent-from", b"resent-reply-to", b"resent-to",
          b"resent-cc", b"resent-bcc", b"resent-date", b"resent-message-id",
          b"return-receipt-to", b"errors-to", b"apparently-to", b"received", b"return-path",
          b"delivered-to", b"content-length", b"content-type", b"content-transfer-encoding",
          b"notice-requested-upon-delivery-to", b"mail-followup-to")
_RESENT = frozenset((b"resent-sender", b"resent-from", b"resent-reply-to", b"resent-to",
                     b"resent-cc", b"resent-bcc", b"resent-date", b"resent-message-id"))
_SENDERS = frozenset((b"sender", b"from", b"reply-to", b"return-receipt-to", b"errors-to",
                      b"resent-sender", b"resent-from", b"resent-reply-to"))
_DROPPED = frozenset((b"bcc", b"resent-bcc", b"return-path", b"content-length"))


def knownField(field):
    """
    The lowercased name of a field qmail-inject knows (hfield_known: case-insensitive
    name, optional blanks, colon), else C{None}.
    """
    colon = field.find(b":")
    if colon < 1:
        return None
    name = field[:colon].rstrip(b" \t").lower()
    if name in _KNOWN and field[:len(name)].lower() == name:
        return name
    return None


def validField(line):
    """hfield_valid: a colon, and before it (blanks trimmed) a non-empty printable name."""
    colon = line.find(b":")
    if colon < 0:
        return False
    name = line[:colon].rstrip(b" \t")
    return bool(name) and all(32 < b < 127 for b in name)


def readHeader(readline, limit=HEADER_LIMIT):
    """
    Split the header off a message as qmail's headerbody does: fields with their
    continuation lines, a leading C{From } line kept as C{MBOX-Line:}, and the header
    ending at a blank line or at the first line that is not a field (then a blank line
    is put before it).  C{readline(size)} reads one line.

    @return: C{(fields, bodyStart)}; C{bodyStart} is C{b""} when the input ended inside
        the header (then the output has no blank line either).
    @raise InjectError: the header is longer than C{limit} (qmail: out of memory, 111).
    """
    fields, current, size = [], None, 0
    while True:
        line = readline(limit + 1 - size)
        if line and not line.endswith(b"\n"):
            if size + len(line) > limit:
                raise InjectError(b"out of memory\n", 111)
            line += b"\n"
        size += len(line)
        if size > limit:
            raise InjectError(b"out of memory\n", 111)
        if not line:
            if current is not None:
                fields.append(current)
            return fields, b""
        if current is not None:
            if line[:1] in (b" ", b"\t"):
                current += line
                continue
            fields.append(current)
        if line == b"\n":
            return fields, line
        if line.startswith(b"From "):
            current = b"MBOX-Line: " + line
        elif validField(line):
            current = line
        else:
            return fields, b"\n" + line


def messageIdField(idHost, now, pid):
    """C{Message-ID: <YYYYMMDDHHMMSS.pid.qmail@idhost>}, UTC."""
    t = time.gmtime(now)
    return b"Message-ID: <%04d%02d%02d%02d%02d%02d.%d.qmail@%s>\n" % (
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, pid, idHost)


def dateField(now):
    """C{Date: D Mon YYYY HH:MM:SS -0000}, UTC."""
    return b"Date: " + date822(now) + b"\n"


def _first(environ, *names):
    for name in names:
        value = environ.get(name)
        if value is not None:
            return value
    return None


class Settings:
    """
    Everything qmail-inject takes from its environment and controls, read once.

    @param environ: bytes to bytes.
    @param controlLine: C{name -> bytes or None}, the first line of C{control/NAME}
        falling back to C{control/me} (qmail's control_rldef).
    @param mftAddresses: lowercased list addresses from C{QMAILMFTFILE}, or C{None}.
    """

    def __init__(self, environ, controlLine, now, pid, mftAddresses=None):
        self.now, self.pid, self.mftAddresses = now, pid, mftAddresses
        letters = environ.get(b"QMAILINJECT", b"")
        self.nameComment = b"c" in letters
        self.ignoreReturnPath = b"s" in letters
        self.deleteFrom = b"f" in letters
        self.deleteMessageId = b"i" in letters
        self.verpRecipient = b"r" in letters
        self.verpMessage = b"m" in letters

        def control(name, variable):
            value = environ.get(variable)
            if value is None:
                value = controlLine(name)
            return name.encode() if value is None else value

        self.qualify = Qualifier(control("defaulthost", b"QMAILDEFAULTHOST"),
                                 control("defaultdomain", b"QMAILDEFAULTDOMAIN"),
                                 control("plusdomain", b"QMAILPLUSDOMAIN"))
        self.idHost = control("idhost", b"QMAILIDHOST")
        self.mailHost = _first(environ, b"QMAILHOST", b"MAILHOST")
        self.mailUser = _first(environ, b"QMAILUSER", b"MAILUSER", b"USER", b"LOGNAME")
        if self.mailUser is None:
            self.mailUser = b"anonymous"
        self.senderHost = _first(environ, b"QMAILSHOST")
        if self.senderHost is None:
            self.senderHost = self.mailHost
        self.senderUser = _first(environ, b"QMAILSUSER")
        if self.senderUser is None:
            self.senderUser = self.mailUser
        self.fullName = _first(environ, b"QMAILNAME", b"MAILNAME", b"NAME")


ARGS, HEADER, BOTH = "a", "h", "H"
"""Recipient strategies: C{-a} arguments only, C{-h} header only, C{-H} both."""


class Injection:
    """
    One message through qmail-inject: feed it the header fields in order, then take the
    new header from L{finishHeader}; L{sender} and L{recipients} are the envelope.

    @param strategy: L{ARGS}, L{HEADER} or L{BOTH} (C{-A} is decided by the caller:
        arguments if any, else header).
    @param arguments: recipient arguments, used unless C{strategy} is L{HEADER}.
    @param sender: the C{-f} argument, or C{None}.
    """

    def __init__(self, settings, strategy, arguments=(), sender=None):
        self.settings = settings
        self.useHeader = strategy != ARGS
        self.sender = None
        self._arguments = []
        self._header, self._resent, self._toCc = [], [], []
        self._saved, self._seen = [], set()
        if sender is not None:
            self.sender = self._envelopeAddress(sender, b"unable to parse this line:\n")
        if strategy != HEADER:
            for arg in arguments:
                self._arguments.append(self._envelopeAddress(
                    arg, b"unable to parse address: ", b"\n"))

    def _envelopeAddress(self, text, error, tail=b""):
        quoted = quoteAddress(text)
        tokens = tokenize(quoted)
        if tokens is None:
            raise InjectError(error + (text if tail else quoted) + tail)
        return unquote(self.settings.qualify(tokens))

    def _collect(self, *lists):
        def rewrite(tokens):
            tokens = self.settings.qualify(tokens)
            for target in lists:
                target.append(unquote(tokens))
            return tokens
        return rewrite

    def _returnPath(self, tokens):
        tokens = self.settings.qualify(tokens)
        if self.sender is None:
            self.sender = unquote(tokens)
            if self.settings.verpRecipient:
                self.sender += b"-@[]"
        return tokens

    def headerField(self, field):
        """Rewrite one field (with its continuation lines and final C{\\n}) and keep it."""
        s = self.settings
        name = knownField(field)
        if ((name == b"from" and s.deleteFrom) or (name == b"message-id" and s.deleteMessageId)
                or (name == b"return-path" and s.ignoreReturnPath)):
            return
        if name:
            self._seen.add(name)
        elif not validField(field):
            raise InjectError(b"invalid header field: " + field)
        mayFail = True
        if name in (b"to", b"cc"):
            rewrite = self._collect(self._header, self._toCc)
        elif name in (b"bcc", b"apparently-to"):
            rewrite = self._collect(self._header)
        elif name in (b"resent-to", b"resent-cc", b"resent-bcc"):
            rewrite = self._collect(self._resent)
        elif name == b"return-path":
            rewrite, mayFail = self._returnPath, False
        elif name in _SENDERS:
            rewrite, mayFail = s.qualify, False
        else:
            rewrite = None
        if rewrite is not None:
            field = self._rewrite(field, rewrite, mayFail)
        if name not in _DROPPED:
            self._saved.append(field)

    def _rewrite(self, field, rewrite, mayFail):
        tokens = tokenize(field)
        if tokens is not None:
            tokens = addressList(tokens, rewrite)
        if tokens is None:
            if mayFail:
                return field
            raise InjectError(b"unable to parse this line:\n" + field)
        return unparse(tokens)

    def _ownAddressField(self, tokens, rewrite):
        text = unparse(tokens)
        parsed = tokenize(text)
        if parsed is not None:
            parsed = addressList(parsed, rewrite)
        if parsed is None:
            raise InjectError(b"unable to parse this line:\n" + text)
        return unparse(parsed)

    def _defaultFrom(self):
        s = self.settings
        user = (QUOTE if needsQuote(s.mailUser) else ATOM, s.mailUser)
        tokens = [(ATOM, b"From"), (COLON, b"")]
        named = s.fullName is not None and not s.nameComment
        if named:
            tokens += [(QUOTE, s.fullName), (LEFT, b"")]
        tokens.append(user)
        if s.mailHost is not None:
            tokens += [(AT, b""), (ATOM, s.mailHost)]
        if named:
            tokens.append((RIGHT, b""))
        if s.fullName is not None and s.nameComment:
            tokens.append((COMMENT, s.fullName))
        return self._ownAddressField(tokens, s.qualify)

    def _defaultReturnPath(self):
        s = self.settings
        user = s.senderUser
        if s.verpMessage:
            user += b"-%d.%d" % (s.now, s.pid)
        if s.verpRecipient:
            user += b"-"
        tokens = [(ATOM, b"Return-Path"), (COLON, b""), (QUOTE, user)]
        if s.senderHost is not None:
            tokens += [(AT, b""), (ATOM, s.senderHost)]
        self._ownAddressField(tokens, self._returnPath)

    @property
    def resent(self):
        return bool(self._seen & _RESENT)

    def finishHeader(self, showReturnPath=False):
        """
        The header to send: with C{showReturnPath} (C{-n}) a C{Return-Path} line first,
        then the fields qmail-inject adds (Date, Message-ID, From, the Cc placeholder and
        Mail-Followup-To, or their Resent- forms), then the kept fields.
        """
        s = self.settings
        if self.sender is None:
            self._defaultReturnPath()
        out = []
        if showReturnPath:
            out.append(b"Return-Path: <" + quoteAddress(self.sender) + b">\n")
        prefix = b"Resent-" if self.resent else b""
        seen = {n[len(b"resent-"):] if self.resent else n for n in self._seen
                if n.startswith(b"resent-") == self.resent}
        if b"date" not in seen:
            out.append(prefix + dateField(s.now))
        if b"message-id" not in seen:
            out.append(prefix + messageIdField(s.idHost, s.now, s.pid))
        if b"from" not in seen:
            out.append(prefix + self._defaultFrom())
        if b"to" not in seen and b"cc" not in seen:
            out.append(prefix + b"Cc: recipient list not shown: ;\n")
        if not self.resent:
            out.append(self._followupTo())
        return b"".join(out + self._saved)

    def _followupTo(self):
        lists = self.settings.mftAddresses
        if lists is None or b"mail-followup-to" in self._seen:
            return b""
        if not any(a.lower() in lists for a in self._toCc):
            return b""
        return (b"Mail-Followup-To: "
                + b",\n  ".join(quoteAddress(a) for a in reversed(self._toCc)) + b"\n")

    @property
    def recipients(self):
        """Envelope recipients: the arguments, then (unless C{-a}) the header's."""
        if not self.useHeader:
            return list(self._arguments)
        return self._arguments + (self._resent if self.resent else self._header)
