"""
qmail-smtpd's address handling, as pure functions over bytes (spec/smtp.md §4–5, §6.2).

Extraction of the envelope address from a MAIL/RCPT argument, ESMTP parameter reading,
localiphost substitution, badmailfrom and rcpthosts decisions, and the Received line.
No I/O, no Twisted.
"""

import time

ADDRESS_LIMIT = 900
"""qmail-smtpd's addrparse(): an address of 900 bytes or more is a syntax error."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.@%+/=:-[]")
_SAFE_TABLE = bytes(b if b in _SAFE else ord("?") for b in range(256))


def extractAddress(arg):
    """
    The address in a MAIL/RCPT argument, and the bytes after it (ESMTP parameters).

    C{<} present: the address runs from after the first C{<} to C{>}; otherwise from after
    the first C{:} (spaces skipped) to a space; neither: the empty address.  A leading
    source route (C{@a,@b:}) is dropped; C{"} toggles quoting and C{\\} escapes a byte.
    """
    lt = arg.find(b"<")
    if lt >= 0:
        start, terminator = lt + 1, 62  # '>'
    else:
        colon = arg.find(b":")
        if colon < 0:
            return b"", b""
        start = colon + 1
        while start < len(arg) and arg[start] == 32:
            start += 1
        terminator = 32
    if arg[start:start + 1] == b"@":
        colon = arg.find(b":", start)
        start = len(arg) if colon < 0 else colon + 1
    if b'"' not in arg and b"\\" not in arg:
        end = arg.find(bytes((terminator,)), start)
        if end < 0:
            return arg[start:], b""
        return arg[start:end], arg[end + 1:]
    out = bytearray()
    quoted = False
    i = start
    n = len(arg)
    while i < n:
        c = arg[i]
        i += 1
        if c == 92:  # backslash
            if i < n:
                out.append(arg[i])
                i += 1
        elif c == 34:  # quote
            quoted = not quoted
        elif c == terminator and not quoted:
            return bytes(out), arg[i:]
        else:
            out.append(c)
    return bytes(out), b""


def sizeParameter(params):
    """The value of an ESMTP C{SIZE=n} parameter (RFC 1870), or C{None}."""
    for word in params.split():
        if word[:5].upper() == b"SIZE=":
            digits = word[5:]
            if digits.isdigit():
                return int(digits)
    return None


def substituteLocalIP(addr, ipme, localiphost):
    """
    Replace a trailing C{@[d.d.d.d]} naming one of this host's addresses by
    C{localiphost}, as qmail-smtpd does before any policy check.
    """
    if localiphost is None or not addr.endswith(b"]"):
        return addr
    at = addr.rfind(b"@")
    if at < 0 or addr[at + 1:at + 2] != b"[":
        return addr
    literal = addr[at + 2:-1]
    parts = literal.split(b".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return addr
    if b".".join(str(int(p)).encode() for p in parts) not in ipme:
        return addr
    return addr[:at + 1] + localiphost


def parseAddress(arg, ipme=frozenset(), localiphost=None):
    """
    qmail's addrparse(): C{(address, params)} or C{None} for a syntax error
    (an address of L{ADDRESS_LIMIT} bytes or more).
    """
    addr, params = extractAddress(arg)
    addr = substituteLocalIP(addr, ipme, localiphost)
    if len(addr) >= ADDRESS_LIMIT:
        return None
    return addr, params


def badmailfromMatches(sender, badmailfrom):
    """Whole sender, or its C{@domain} from the last C{@}, listed (lowercased set)."""
    if not sender or not badmailfrom:
        return False
    lower = sender.lower()
    if lower in badmailfrom:
        return True
    at = lower.rfind(b"@")
    return at >= 0 and lower[at:] in badmailfrom


def rcpthostsAllows(recipient, rcpthosts, morercpthosts=None):
    """
    qmail-smtpd's addrallowed(): no rcpthosts file allows everything; a recipient without
    C{@} is allowed; else the domain or a C{.}-suffix of it must be listed.
    """
    if rcpthosts is None:
        return True
    at = recipient.rfind(b"@")
    if at < 0:
        return True
    domain = recipient[at + 1:].lower()
    candidates = [domain]
    i = domain.find(b".")
    while i >= 0:
        candidates.append(domain[i:])
        i = domain.find(b".", i + 1)
    for c in candidates:
        if c in rcpthosts:
            return True
    if morercpthosts is not None:
        for c in candidates:
            if c in morercpthosts:
                return True
    return False


def safe(text):
    """qmail's safe-for-Received transform: outside the kept set, every byte becomes C{?}."""
    return text.translate(_SAFE_TABLE)


_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def receivedDate(when):
    """C{D Mon YYYY HH:MM:SS -0000} in UTC, the day not zero-padded (qmail's date822fmt)."""
    t = time.gmtime(when)
    return b"%d %s %d %02d:%02d:%02d -0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def receivedLine(remotehost, helo, remoteinfo, remoteip, local, proto, when):
    """
    qmail-smtpd's Received line, byte for byte.  C{helo} appears only when it differs
    (case-insensitively) from C{remotehost}; C{remoteinfo} may be C{None}.
    """
    parts = [b"Received: from ", safe(remotehost)]
    if helo is not None and helo.lower() != remotehost.lower():
        parts += [b" (HELO ", safe(helo), b")"]
    parts.append(b" (")
    if remoteinfo is not None:
        parts += [safe(remoteinfo), b"@"]
    parts += [safe(remoteip), b")\n  by ", safe(local), b" with ", proto, b"; ",
              receivedDate(when), b"\n"]
    return b"".join(parts)
