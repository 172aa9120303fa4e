"""
Bounce messages in qmail's QSBMF form (spec/queue.md §7-8), and RFC 822 quoting of
addresses as qmail's C{quote()} does it.

Pure: bytes in, bytes out; the sender service appends entries to C{bounce/<id>} and injects
the message.  Must not import the queue, Twisted or any I/O module.
"""

import time

_ATOM = frozenset(
    b"!#$%&'*+-/=?^_`{|}~."
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

DOUBLE_BOUNCE_SENDER = b"#@[]"

TOO_LONG_IN_QUEUE = b"I'm not going to try again; this message has been in the queue too long.\n"


def needsQuoting(local):
    """Must this local part be sent as a quoted string (RFC 822, as qmail decides)?"""
    if not local:
        return True
    if any(b not in _ATOM for b in local):
        return True
    return local.startswith(b".") or local.endswith(b".") or b".." in local


def quoteLocal(local):
    """C{local} as-is, or in double quotes with CR, LF, C{"} and C{\\} backslash-escaped."""
    if not needsQuoting(local):
        return local
    out = bytearray(b'"')
    for b in local:
        if b in b'\r\n"\\':
            out += b"\\"
        out.append(b)
    out += b'"'
    return bytes(out)


def quoteAddress(address):
    """qmail's C{quote2()}: quote the part before the last C{@}; C{""} stays empty."""
    if not address:
        return address
    at = address.rfind(b"@")
    if at == -1:
        return quoteLocal(address)
    return quoteLocal(address[:at]) + address[at:]


def stripVirtualPrepend(recipient, virtualdomains):
    """
    The recipient as the bounce shows it: a virtualdomains prepend C{P-} removed when the
    first matching key (domain, its C{.}-suffixes, then the catch-all) has prepend C{P}.

    @param virtualdomains: mapping of lowercased key to prepend (see L{rewrite}).
    """
    at = recipient.rfind(b"@")
    if at == -1:
        return recipient
    domain = recipient[at + 1:]
    for i in range(len(domain) + 1):
        if i == 0 or i == len(domain) or domain[i:i + 1] == b".":
            prepend = virtualdomains.get(domain[i:].lower())
            if prepend is None:
                continue
            if prepend and recipient.startswith(prepend + b"-"):
                return recipient[len(prepend) + 1:]
            return recipient
    return recipient


def bounceEntry(recipient, report, virtualdomains=None):
    """
    One failed recipient's entry for C{bounce/<id>}: C{<R>:\\n}, the report (newline
    added, inner empty lines turned into C{/}), then a blank line.
    """
    shown = stripVirtualPrepend(recipient, virtualdomains or {}).replace(b"\n", b"_")
    text = bytearray(b"<" + shown + b">:\n" + report)
    if report and not report.endswith(b"\n"):
        text += b"\n"
    for pos in range(len(text) - 2, 0, -1):
        if text[pos] == 10 and text[pos - 1] == 10:
            text[pos] = 47
    return bytes(text) + b"\n"


def cutVerp(sender):
    """C{owner-@host-@[]} becomes C{owner-@host}: a VERP sender bounces to its plain form."""
    if sender.endswith(b"-@[]"):
        return sender[:-4]
    return sender


def bounceEnvelope(sender, doubleBounceTo, doubleBounceHost):
    """
    Who the bounce goes to: C{(bounceSender, bounceRecipient)}, or C{None} for a triple
    bounce (discard).  C{sender} is the message's sender after L{cutVerp}.
    """
    if sender == DOUBLE_BOUNCE_SENDER:
        return None
    if sender:
        return b"", sender
    return DOUBLE_BOUNCE_SENDER, doubleBounceTo + b"@" + doubleBounceHost


_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def dateField(now):
    """C{Date: 21 Nov 2024 19:26:00 -0000\\n} (UTC, day not padded) for Unix time C{now}."""
    t = time.gmtime(now)
    return b"Date: %d %s %d %02d:%02d:%02d -0000\n" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def bounceHead(sender, recipient, bounceText, now, bouncefrom, bouncehost):
    """
    The bounce message up to and including its C{Return-Path:} line; the sender service
    appends the original C{mess} file verbatim after it.

    @param sender: the original sender after L{cutVerp} (empty for a double bounce).
    @param recipient: the bounce recipient from L{bounceEnvelope}.
    @param bounceText: the contents of C{bounce/<id>}.
    """
    if sender:
        intro = (b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                 b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")
        separator = b"--- Below this line is a copy of the message.\n\n"
    else:
        intro = b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
        separator = b"--- Below this line is the original bounce.\n\n"
    return b"".join([
        dateField(now),
        b"From: " + quoteLocal(bouncefrom) + b"@" + bouncehost + b"\n",
        b"To: " + quoteAddress(recipient) + b"\n",
        b"Subject: failure notice\n\n",
        b"Hi. This is the qmail-send program at " + bouncehost + b".\n",
        intro,
        bounceText,
        separator,
        b"Return-Path: <" + quoteAddress(sender) + b">\n",
    ])


def bounceMessage(sender, recipient, bounceText, original, now, bouncefrom, bouncehost):
    """The whole bounce (L{bounceHead} plus the original message), for small messages."""
    return bounceHead(sender, recipient, bounceText, now, bouncefrom, bouncehost) + original
