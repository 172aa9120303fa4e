"""
RFC 822 header tokens the way qmail's token822 reads and writes them (spec/tools.md §1):
atoms, quoted strings, domain literals, comments and specials; right-to-left address
lists with groups and route addresses; qmail-inject's folding at 80 columns; quote.c's
local-part quoting.

Pure: bytes in, bytes out.  Imports nothing from qmailtx.
"""

LINELEN = 80
"""qmail-inject folds rewritten address lists at this many bytes per line."""

ATOM, QUOTE, LITERAL, COMMENT, LEFT, RIGHT, AT, COMMA, SEMI, COLON, DOT = range(1, 12)
_SPECIALS = {ord("."): DOT, ord(","): COMMA, ord("@"): AT, ord("<"): LEFT, ord(">"): RIGHT,
             ord(":"): COLON, ord(";"): SEMI}
_SPECIAL_TEXT = {v: bytes([k]) for k, v in _SPECIALS.items()}
_SPACE = frozenset(b" \t\r\n")
_NOT_ATOM = frozenset(b" \t\r\n([\"<>;:@,.")
_ESCAPED = frozenset(b'"[]()\\\r\n')
_WORDS = (ATOM, LITERAL, QUOTE, COMMENT)
_CLOSERS = {ord("("): ord(")"), ord('"'): ord('"'), ord("["): ord("]")}
_KINDS = {ord("("): COMMENT, ord('"'): QUOTE, ord("["): LITERAL}
_WRAP = {QUOTE: (b'"', b'"'), LITERAL: (b"[", b"]"), COMMENT: (b"(", b")"), ATOM: (b"", b"")}

# quote.c's table of bytes that may stand unquoted in a local part.
_LOCAL_OK = frozenset(b"!#$%&'*+-/0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`"
                      b"abcdefghijklmnopqrstuvwxyz{|}~.")


def tokenize(text):
    """
    Split C{text} into C{(type, bytes)} tokens as qmail's token822_parse does, or return
    C{None} for a stray C{)} or C{]} or an unterminated quote, comment or literal.
    Nested comment parentheses are dropped; a backslash keeps the byte after it.
    """
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPECIALS:
            tokens.append((_SPECIALS[c], b""))
        elif c in _SPACE:
            pass
        elif c in (ord(")"), ord("]")):
            return None
        elif c in _CLOSERS:
            closer, nests = _CLOSERS[c], c == ord("(")
            level, out = 1, bytearray()
            while level:
                i += 1
                if i >= n:
                    return None
                b = text[i]
                if nests and b == c:
                    level += 1
                elif b == closer:
                    level -= 1
                else:
                    if b == ord("\\"):
                        i += 1
                        if i >= n:
                            return None
                    out.append(text[i])
            tokens.append((_KINDS[c], bytes(out)))
        else:
            out = bytearray()
            while True:
                if text[i] == ord("\\"):
                    i += 1
                    if i >= n:
                        break
                out.append(text[i])
                i += 1
                if i >= n or text[i] in _NOT_ATOM:
                    break
            i -= 1
            kind = ATOM
            if any(b < 32 or b > 126 or b in b")]\\" for b in out):
                kind = QUOTE
            tokens.append((kind, bytes(out)))
        i += 1
    return tokens


def _needSpace(last, new):
    if not last:
        return False
    if last in (COLON, COMMA) or new == LEFT:
        return True
    return last in _WORDS and new in _WORDS


def unparse(tokens, lineLength=LINELEN):
    """
    Tokens back to header text ending in C{\\n}, as token822_unparse writes it: words
    separated by one space, a fold offered after every comma and taken only when the
    line would pass C{lineLength}.
    """
    out = bytearray()
    lineStart, lastBreak, last = 0, None, 0

    def offerBreak():
        nonlocal lineStart, lastBreak
        pos = len(out)
        if lastBreak is not None and (not lineLength or pos - lineStart <= lineLength):
            del out[lastBreak:lastBreak + 2]
            lastBreak = pos - 2
        else:
            if lastBreak is not None:
                lineStart = lastBreak + 1
            lastBreak = pos
        out.extend(b"\n ")

    for kind, text in tokens:
        if _needSpace(last, kind):
            out.append(32)
        last = kind
        if kind == COMMA:
            out.append(ord(","))
            offerBreak()
        elif kind in _SPECIAL_TEXT:
            out += _SPECIAL_TEXT[kind]
        else:
            start, end = _WRAP[kind]
            out += start
            for b in text:
                if b in _ESCAPED:
                    out.append(ord("\\"))
                out.append(b)
            out += end
    offerBreak()
    del out[-1]
    return bytes(out)


def unquote(tokens):
    """The address as it goes on the envelope: comments dropped, quotes removed."""
    out = bytearray()
    for kind, text in tokens:
        if kind in _SPECIAL_TEXT:
            out += _SPECIAL_TEXT[kind]
        elif kind == LITERAL:
            out += b"[" + text + b"]"
        elif kind in (ATOM, QUOTE):
            out += text
    return bytes(out)


def addressList(tokens, rewrite):
    """
    Rewrite every address of a header field (C{tokens} start with the field name and its
    colon) with C{rewrite(addressTokens) -> addressTokens}, parsing right to left as
    token822_addrlist does: route addresses C{<...>}, groups C{name: ...;}, and bare words
    next to each other taken as separate addresses.  C{None} on a syntax error (after
    C{rewrite} has seen the addresses right of it).
    """
    out, addr = [], []
    inGroup, wordOk = False, True

    def flush(comma):
        if addr:
            out.extend(reversed(rewrite(addr[::-1])))
            del addr[:]
            if comma:
                out.append((COMMA, b""))

    i = len(tokens) - 1
    while i >= 2:
        kind = tokens[i][0]
        if kind == SEMI:
            flush(True)
            if inGroup:
                return None
            inGroup, wordOk = True, True
        elif kind == COLON:
            flush(False)
            if not inGroup:
                return None
            inGroup = False
            while i >= 2 and tokens[i][0] != COMMA:
                out.append(tokens[i])
                i -= 1
            if i >= 2:
                out.append(tokens[i])
                i -= 1
            wordOk = True
            continue
        elif kind == RIGHT:
            flush(True)
            out.append(tokens[i])
            i -= 1
            while i >= 2 and tokens[i][0] != LEFT:
                addr.append(tokens[i])
                i -= 1
            out.extend(reversed(rewrite(addr[::-1])))
            del addr[:]
            if i < 2:
                return None
            out.append(tokens[i])
            i -= 1
            while i >= 2 and tokens[i][0] in (COMMENT, ATOM, QUOTE, AT, DOT):
                out.append(tokens[i])
                i -= 1
            wordOk = False
            continue
        elif kind in (ATOM, QUOTE, LITERAL):
            if not wordOk:
                flush(True)
            wordOk = False
            addr.append(tokens[i])
            i -= 1
            continue
        elif kind == COMMENT:
            pass
        elif kind == COMMA:
            flush(False)
            wordOk = True
        else:
            wordOk = True
            addr.append(tokens[i])
            i -= 1
            continue
        out.append(tokens[i])
        i -= 1
    flush(False)
    out.extend(reversed(tokens[:2]))
    return out[::-1]


def needsQuote(local):
    """quote.c's quote_need: may this local part not stand bare in an address?"""
    if not local or any(b not in _LOCAL_OK for b in local):
        return True
    return local.startswith(b".") or local.endswith(b".") or b".." in local


def quoteAddress(address):
    """quote2: quote the local part (left of the last C{@}) when it needs it."""
    if not address:
        return address
    local, at, domain = address.rpartition(b"@")
    if not at:
        local, domain = address, b""
    if needsQuote(local):
        local = b'"' + b"".join(b"\\" + bytes([b]) if b in b'\r\n"\\' else bytes([b])
                                for b in local) + b'"'
    return local + at + domain
