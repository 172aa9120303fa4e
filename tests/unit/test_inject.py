"""
qmail-inject's pure layer (spec/tools.md §1): token822 parsing and writing, address
qualification, header splitting and rewriting, generated fields, envelope choice.

Expected texts were checked byte for byte against notqmail 1.09's qmail-inject -n.
"""

import io

import pytest

from qmailtx import inject
from qmailtx.inject import InjectError, Injection, Qualifier, Settings, readHeader
from qmailtx.token822 import (
    AT, ATOM, COMMENT, DOT, LITERAL, QUOTE, addressList, needsQuote, quoteAddress,
    tokenize, unparse, unquote)

NOW = 1700000000
PID = 4242
CONTROLS = {"defaulthost": b"mx.example.com", "defaultdomain": b"example.com",
            "plusdomain": b"plus.example.net", "idhost": b"id.example.com"}


def settings(env=None, controls=CONTROLS, mft=None):
    environ = {b"USER": b"joe"} if env is None else env
    return Settings(environ, controls.get, NOW, PID, mft)


def run(message, strategy=inject.HEADER, args=(), sender=None, env=None, show=True, mft=None):
    """Header and envelope as qmail-inject -n would produce them."""
    injection = Injection(settings(env, mft=mft), strategy, args, sender)
    stream = io.BytesIO(message)
    fields, start = readHeader(stream.readline)
    for field in fields:
        injection.headerField(field)
    text = injection.finishHeader(showReturnPath=show) + start + stream.read()
    return text, injection.sender, injection.recipients


GENERATED = (b"Date: 14 Nov 2023 22:13:20 -0000\n"
             b"Message-ID: <20231114221320.4242.qmail@id.example.com>\n")


def test_tokenizeKinds():
    """Atoms, quoted strings, literals, comments and specials become typed tokens."""
    assert tokenize(b'To: "a b"@[1.2] (c) x.y') == [
        (ATOM, b"To"), (10, b""), (QUOTE, b"a b"), (AT, b""), (LITERAL, b"1.2"),
        (COMMENT, b"c"), (ATOM, b"x"), (DOT, b""), (ATOM, b"y")]


def test_tokenizeEscapesAndNesting():
    """A backslash keeps the next byte; nested comment parentheses are dropped."""
    assert tokenize(b"a\\ b (x (y) z) \"q\\\"\"") == [
        (ATOM, b"a b"), (COMMENT, b"x y z"), (QUOTE, b'q"')]


def test_tokenizeNonAsciiAtomIsQuoted():
    """An atom holding control or 8-bit bytes is written back quoted."""
    assert tokenize(b"\xe9t\xe9") == [(QUOTE, b"\xe9t\xe9")]


@pytest.mark.parametrize("text", [b")a", b"x ]", b"(open", b'"open', b"[open", b'"a\\'])
def test_tokenizeErrors(text):
    """A closer starting a token and unterminated quotes, comments or literals do not parse."""
    assert tokenize(text) is None


def test_closerInsideAtom():
    """A closer inside an atom belongs to it, which makes the atom quoted."""
    assert tokenize(b"a)b") == [(QUOTE, b"a)b")]


def test_unparseFoldsAt80():
    """A rewritten list is folded after commas only where a line would pass 80 bytes."""
    q = settings().qualify
    field = (b"To: a,b,c,dddddddddddddddddddddd,eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee,"
             b"fffffffffffffffffffffffffff,gggggggggggggggg\n")
    assert unparse(addressList(tokenize(field), q)) == (
        b"To: a@mx.example.com, b@mx.example.com, c@mx.example.com,\n"
        b"  dddddddddddddddddddddd@mx.example.com,\n"
        b"  eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee@mx.example.com,\n"
        b"  fffffffffffffffffffffffffff@mx.example.com, gggggggggggggggg@mx.example.com\n")


def test_addressListGroupsAndRoutes():
    """Group names and phrases stay; only addresses are rewritten; a syntax error is None."""
    q = settings().qualify
    out = addressList(tokenize(b'To: list: a, "B" <b>;, c (C)\n'), q)
    assert unparse(out) == (b'To: list: a@mx.example.com, "B" <b@mx.example.com>;,'
                            b" c@mx.example.com (C)\n")
    assert addressList(tokenize(b"To: foo: bar, baz\n"), q) is None


@pytest.mark.parametrize("address,qualified", [
    (b"joe", b"joe@mx.example.com"),
    (b"joe@host", b"joe@host.example.com"),
    (b"joe@host.org", b"joe@host.org"),
    (b"joe@host+", b"joe@host.plus.example.net"),
    (b"@r1,@r2:joe@host.org", b"joe@host.org"),
    (b"joe@host.org.", b"joe@host.org"),
    (b"joe@", b"joe@mx.example.com"),
    (b"joe@[1.2.3.4]", b"joe@[1.2.3.4]"),
    (b"joe@[]", b"joe@[]"),
    (b"", b""),
])
def test_qualify(address, qualified):
    """rwgeneric: routes and stray dots/ats go, defaulthost, plusdomain, defaultdomain added."""
    assert unquote(settings().qualify(tokenize(address))) == qualified


def test_qualifierDefaultHostPlus():
    """A defaulthost ending in + is itself completed with plusdomain."""
    q = Qualifier(b"dh+", b"dd.org", b"pd.net")
    assert unquote(q(tokenize(b"joe"))) == b"joe@dh.pd.net"


def test_quoteAddress():
    """Only a local part that needs it is quoted (quote.c's table, dots at ends, ..)."""
    assert quoteAddress(b"joe@x") == b"joe@x"
    assert quoteAddress(b"a b@x") == b'"a b"@x'
    assert quoteAddress(b'a"b') == b'"a\\"b"'
    assert quoteAddress(b"") == b""
    assert needsQuote(b"a..b") and needsQuote(b".a") and not needsQuote(b"a.b")


def test_readHeaderShapes():
    """Continuations join, a From_ line becomes MBOX-Line, a non-field line starts the body."""
    s = io.BytesIO(b"From x y\nTo: a\n  , b\nnot a field\nTo: c\n")
    fields, start = readHeader(s.readline)
    assert fields == [b"MBOX-Line: From x y\n", b"To: a\n  , b\n"]
    assert start == b"\nnot a field\n" and s.read() == b"To: c\n"


def test_readHeaderEnds():
    """A blank line ends the header; CRLF is not blank; input may end inside the header."""
    assert readHeader(io.BytesIO(b"A: 1\n\nb").readline) == ([b"A: 1\n"], b"\n")
    assert readHeader(io.BytesIO(b"A: 1\r\n\r\n").readline) == ([b"A: 1\r\n"], b"\n\r\n")
    assert readHeader(io.BytesIO(b"A: 1").readline) == ([b"A: 1\n"], b"")


def test_readHeaderLimit():
    """A header past the limit is qmail's out of memory: temporary."""
    with pytest.raises(InjectError) as e:
        readHeader(io.BytesIO(b"A: " + b"x" * 100 + b"\n\n").readline, limit=50)
    assert (e.value.code, e.value.text) == (111, b"out of memory\n")


def test_completeHeader():
    """Date, Message-ID, From are added; Bcc removed; To rewritten; recipients from header."""
    text, sender, rcpts = run(b"To: bob, alice@x (Alice)\nBcc: secret\nSubject: hi\n\nbody\n")
    assert text == (b"Return-Path: <joe@mx.example.com>\n" + GENERATED
                    + b"From: joe@mx.example.com\n"
                    b"To: bob@mx.example.com, alice@x.example.com (Alice)\n"
                    b"Subject: hi\n\nbody\n")
    assert sender == b"joe@mx.example.com"
    assert rcpts == [b"alice@x.example.com", b"bob@mx.example.com", b"secret@mx.example.com"]


def test_noToOrCc():
    """Without To or Cc the placeholder Cc is added; Content-Length is dropped."""
    text, _, _ = run(b"Content-Length: 3\nSubject: s\n\n", inject.ARGS, [b"r"], show=False)
    assert text == (GENERATED + b"From: joe@mx.example.com\n"
                    b"Cc: recipient list not shown: ;\nSubject: s\n\n")


def test_fromName():
    """NAME gives name-address style; QMAILINJECT=c address-comment style."""
    text, _, _ = run(b"To: a\n", env={b"USER": b"joe", b"NAME": b'Joe "Q" U'})
    assert b'From: "Joe \\"Q\\" U" <joe@mx.example.com>\n' in text
    text, _, _ = run(b"To: a\n", env={b"USER": b"joe", b"NAME": b"Joe", b"QMAILINJECT": b"c"})
    assert b"From: joe@mx.example.com (Joe)\n" in text


def test_userAndHostVariables():
    """QMAILUSER/QMAILHOST make From, QMAILSUSER/QMAILSHOST the envelope sender."""
    env = {b"USER": b"jo e", b"QMAILHOST": b"h", b"QMAILSUSER": b"s", b"QMAILSHOST": b"sh.org"}
    text, sender, _ = run(b"To: a\n", env=env)
    assert b'From: "jo e"@h.example.com\n' in text and sender == b"s@sh.org"
    assert run(b"To: a\n", env={})[1] == b"anonymous@mx.example.com"


def test_returnPathAndDashF():
    """Return-Path sets the sender and is removed; -f wins; QMAILINJECT=s ignores it."""
    message = b"Return-Path: <rp@x.org>\nTo: a\n\n"
    text, sender, _ = run(message, show=False)
    assert sender == b"rp@x.org" and b"Return-Path" not in text
    assert run(message, sender=b"f@y")[1] == b"f@y.example.com"
    assert run(message, env={b"USER": b"u", b"QMAILINJECT": b"s"})[1] == b"u@mx.example.com"
    assert run(message, sender=b"")[1] == b""


def test_deleteLetters():
    """QMAILINJECT f and i drop the incoming From and Message-ID (new ones are made)."""
    text, _, _ = run(b"From: me\nMessage-ID: <x@y>\nTo: a\n",
                     env={b"USER": b"u", b"QMAILINJECT": b"fi"}, show=False)
    assert text == GENERATED + b"From: u@mx.example.com\nTo: a@mx.example.com\n"


def test_verp():
    """r appends -@[] to the sender; m adds -time.pid- to its local part."""
    assert run(b"To: a\n", env={b"USER": b"u", b"QMAILINJECT": b"r"})[1] == (
        b"u-@mx.example.com-@[]")
    assert run(b"To: a\n", env={b"USER": b"u", b"QMAILINJECT": b"m"})[1] == (
        b"u-1700000000.4242@mx.example.com")


def test_resent():
    """A resent message gets Resent- fields and its recipients from Resent-To/Cc/Bcc."""
    text, _, rcpts = run(b"To: a\nResent-To: r1, r2\nResent-Bcc: r3\nResent-From: me\n\n")
    assert text.startswith(b"Return-Path: <joe@mx.example.com>\n"
                           b"Resent-Date: 14 Nov 2023 22:13:20 -0000\n"
                           b"Resent-Message-ID: <20231114221320.4242.qmail@id.example.com>\n"
                           b"To: a@mx.example.com\n")
    assert b"Resent-Bcc" not in text
    assert rcpts == [b"r2@mx.example.com", b"r1@mx.example.com", b"r3@mx.example.com"]


@pytest.mark.parametrize("strategy,args,expected", [
    (inject.ARGS, [b"x@y.org", b"z"], [b"x@y.org", b"z@mx.example.com"]),
    (inject.HEADER, [b"x@y.org"], [b"a@mx.example.com"]),
    (inject.BOTH, [b"x@y.org"], [b"x@y.org", b"a@mx.example.com"]),
])
def test_recipientStrategies(strategy, args, expected):
    """-a uses only arguments, -h only the header, -H both (arguments first)."""
    assert run(b"To: a\n", strategy, args)[2] == expected


def test_brokenRecipientFieldKept():
    """An unparsable To is kept as it is (notqmail 1.09); a broken From is fatal."""
    text, _, rcpts = run(b"To: foo: bar, baz\n\n", inject.ARGS, [b"r"])
    assert b"To: foo: bar, baz\n" in text and rcpts == [b"r@mx.example.com"]
    with pytest.raises(InjectError) as e:
        run(b"From: (open\nTo: x\n")
    assert (e.value.code, e.value.text) == (100, b"unable to parse this line:\nFrom: (open\n")


def test_badArgument():
    """An argument that does not parse: unable to parse address, permanent."""
    with pytest.raises(InjectError) as e:
        run(b"", inject.ARGS, [b"x@(y"])
    assert (e.value.code, e.value.text) == (100, b"unable to parse address: x@(y\n")


def test_mailFollowupTo():
    """A list address (any case) in To+Cc adds Mail-Followup-To with all of To+Cc."""
    lists = frozenset([b"list@lists.example.org"])
    text, _, _ = run(b"To: a, List@Lists.example.org\nCc: c\n", mft=lists, show=False)
    assert (b"Mail-Followup-To: c@mx.example.com,\n  a@mx.example.com,\n"
            b"  List@Lists.example.org\nTo: ") in text
    text, _, _ = run(b"To: a\n", mft=lists)
    assert b"Mail-Followup-To" not in text
    text, _, _ = run(b"To: list@lists.example.org\nMail-Followup-To: x\n", mft=lists)
    assert text.count(b"Mail-Followup-To") == 1


def test_controlsDefaultToLiterals():
    """Without controls or me, the literal names defaulthost/defaultdomain/idhost are used."""
    s = Settings({b"USER": b"u"}, {}.get, NOW, PID)
    assert unquote(s.qualify(tokenize(b"x"))) == b"x@defaulthost.defaultdomain"
    assert s.idHost == b"idhost"


def test_environmentOverridesControls():
    """QMAILDEFAULTHOST, QMAILDEFAULTDOMAIN, QMAILPLUSDOMAIN, QMAILIDHOST win over control/."""
    s = Settings({b"QMAILDEFAULTHOST": b"dh", b"QMAILDEFAULTDOMAIN": b"dd.org",
                  b"QMAILPLUSDOMAIN": b"pd.net", b"QMAILIDHOST": b"id.x"}, CONTROLS.get, NOW, PID)
    assert unquote(s.qualify(tokenize(b"x"))) == b"x@dh.dd.org"
    assert unquote(s.qualify(tokenize(b"x@h+"))) == b"x@h.pd.net"
    assert s.idHost == b"id.x"
