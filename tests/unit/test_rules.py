"""
Unit tests for L{qmailtx.rules}: tcprules syntax, cdb encoding, lookup order, record
decoding (spec/rules.md §2-4).  Pure: no disk except L{RulesSource}'s own temp files.
"""

import os

import pytest

from qmailtx import rules
from qmailtx.cdbfile import buildCdb
from qmailtx.rules import (
    DefaultRulesSource,
    Rules,
    RulesError,
    RulesMissing,
    RulesSource,
    candidateKeys,
    compileRules,
    decodeRecords,
    djbErrorText,
    looksLikeCdb,
    matchFromValue,
    parseLine,
)


@pytest.mark.parametrize(
    "line, pairs",
    [
        (b'127.:allow,RELAYCLIENT=""', [(b"127.", b"+RELAYCLIENT=\0")]),
        (b'5.5.5.5:deny,A="x"', [(b"5.5.5.5", b"D\0+A=x\0")]),
        (b":allow", [(b"", b"")]),
        (b":deny", [(b"", b"D\0")]),
        (b"a:allow,A=/x/,B=xhellox", [(b"a", b"+A=x\0+B=hello\0")]),
        (b'a:allow, B="q"', [(b"a", b"+ B=q\0")]),
        (b'a:allow,="q"', [(b"a", b"+=q\0")]),
        (b"a:allow,B=22", [(b"a", b"+B=\0")]),
        (b"8.8.8.8 :allow", [(b"8.8.8.8 ", b"")]),
        (b"  #x:allow", [(b"  #x", b"")]),
        (b"=Host.Example.COM:deny", [(b"=Host.Example.COM", b"D\0")]),
        (b"a:allow \t ", [(b"a", b"")]),
        (b"a:b:allow", []),
    ],
)
def test_parseLineEncoding(line, pairs):
    """Each rule line becomes the exact cdb key/value bytes tcprules writes."""
    if pairs == []:
        with pytest.raises(RulesError):
            parseLine(line)
    else:
        assert parseLine(line) == pairs


@pytest.mark.parametrize("line", [b"", b"#x:deny", b"# comment", b"no colon here", b"   "])
def test_ignoredLines(line):
    """Comments, blank lines and lines without a colon produce nothing and no error."""
    assert parseLine(line) == []


@pytest.mark.parametrize(
    "line",
    [
        b"1.2.3.4:allow#x",
        b"1.2.3.4:allow\r",
        b"1.2.3.4:Allow",
        b"1.2.3.4:",
        b"1.2.3.4:allow,",
        b"1.2.3.4:allow,A",
        b"1.2.3.4:allow,A=",
        b'1.2.3.4:allow,A="x',
        b'1.2.3.4:allow,A="x"y',
        b"1.2.3.4:allowx",
        b"1.2.3.4:denyallow",
        b"1.2.3.a-5:allow",
        b"1.2.3.1-x:allow",
        b"1-2-3:allow",
    ],
)
def test_fatalLines(line):
    """Malformed instructions or ranges are fatal and the error names the stripped line."""
    with pytest.raises(RulesError) as e:
        parseLine(line + b"  ")
    assert e.value.line == line
    assert str(e.value).startswith("unable to parse this line: ")


@pytest.mark.parametrize(
    "address, keys",
    [
        (b"1.2.3.37-39", [b"1.2.3.37", b"1.2.3.38", b"1.2.3.39"]),
        (b"10.2-3.", [b"10.2.", b"10.3."]),
        (b"1-3.", [b"1.", b"2.", b"3."]),
        (b"1.2.3.250-260", [b"1.2.3.%d" % n for n in range(250, 256)]),
        (b"4-2", []),
        (b"1-", []),
        (b"0-", [b"0"]),
        (b"-2.1", [b"0.1", b"1.1", b"2.1"]),
        (b"005-007.1", [b"5.1", b"6.1", b"7.1"]),
        (b"1-2.3-4", [b"1.3-4", b"2.3-4"]),
        (b"a=b-c", [b"a=b-c"]),
        (b"x@1-2", [b"x@1-2"]),
        (b"04.1", [b"04.1"]),
        (b"1.2.3.4/24", [b"1.2.3.4/24"]),
        (b"18446744073709551617-2", [b"1", b"2"]),
    ],
)
def test_ranges(address, keys):
    """Ranges expand like tcprules: first dash only, clamped at 255, C unsigned long."""
    assert [k for k, v in parseLine(address + b":allow")] == keys


def test_compileKeepsOrderAndDuplicates():
    """Every rule is written in file order, duplicates included; the last line needs no LF."""
    text = b"# c\n1.2.3.4:deny\n1.2.3.4:allow\n\n:allow"
    assert compileRules(text) == [(b"1.2.3.4", b"D\0"), (b"1.2.3.4", b""), (b"", b"")]


def test_candidateKeysFullOrder():
    """With IP, host and info, keys come in tcpserver's order, first match wins."""
    assert list(candidateKeys("1.2.3.4", "a.b.example.org", "joe")) == [
        b"joe@1.2.3.4",
        b"joe@=a.b.example.org",
        b"1.2.3.4",
        b"=a.b.example.org",
        b"1.2.3.",
        b"1.2.",
        b"1.",
        b"=.b.example.org",
        b"=.example.org",
        b"=.org",
        b"=",
        b"",
    ]


def test_candidateKeysIpOnly():
    """Without host or info only IP, its dot prefixes and the empty key are tried."""
    assert list(candidateKeys(b"10.0.0.1")) == [b"10.0.0.1", b"10.0.0.", b"10.0.", b"10.", b""]


def test_candidateKeysInfoWithoutHost():
    """INFO@=HOST is skipped when HOST is unset, but INFO@IP is tried."""
    keys = list(candidateKeys("1.2.3.4", None, "u"))
    assert keys[:2] == [b"u@1.2.3.4", b"1.2.3.4"]


def test_decodeRecords():
    """Records are NUL-terminated; an unterminated tail is ignored."""
    assert decodeRecords(b"D\0+A=1\0+B\0junk") == [b"D", b"+A=1", b"+B"]
    assert decodeRecords(b"") == []


def test_matchFromValue():
    """D denies wherever it stands; +NAME=v sets NAME; a record without = is ignored."""
    m = matchFromValue(b"1.2.", b"+A=1\0D\0+B\0+C=x=y\0?Q=1\0")
    assert m.key == "1.2." and m.deny is True
    assert m.env == {"A": "1", "C": "x=y"}


def test_matchFromValueSkipsAnEmptyName():
    """
    tcprules accepts ',="x"' (an empty name; tcpserver exports '=x'), but no program can
    be given such a variable from Python: it made every QMAILQUEUE run and checkpassword
    call of those clients fail.  It is skipped; the rest of the rule applies.
    """
    m = matchFromValue(b"127.0.0.3", b"+QMAILQUEUE=/bin/qq\0+=x\0+RELAYCLIENT=\0")
    assert m.env == {"QMAILQUEUE": "/bin/qq", "RELAYCLIENT": ""}


def test_lookupFirstKeyWins():
    """A more specific key shadows broader ones; the first duplicate is used."""
    r = Rules.fromText(
        b'1.2.3.4:deny\n1.2.3.4:allow\n1.2.:allow,RELAYCLIENT=""\n'
        b"=.spam.example:deny\n:allow,DEFAULT=/y/\n"
    )
    assert r.lookup("1.2.3.4").deny
    m = r.lookup("1.2.9.9", "x.spam.example")
    assert (m.key, m.deny, m.env) == ("1.2.", False, {"RELAYCLIENT": ""})
    m = r.lookup("9.9.9.9", "x.spam.example")
    assert (m.key, m.deny) == ("=.spam.example", True)
    m = r.lookup("9.9.9.9")
    assert (m.key, m.env) == ("", {"DEFAULT": "y"})


def test_lookupNoMatchAllows():
    """No key at all means allow with no variables."""
    m = Rules.fromText(b"1.2.3.4:deny\n").lookup("5.6.7.8")
    assert (m.key, m.deny, m.env) == (None, False, {})


def test_hostRulesAreCaseSensitive():
    """Keys are stored as written, so an upper-case =host rule never matches a lowercased name."""
    r = Rules.fromText(b"=Host.Example.COM:deny\n")
    assert not r.lookup("1.1.1.1", "host.example.com").deny


def test_cdbAndTextAgree(tmp_path):
    """A cdb built from the pairs answers exactly like the text it came from."""
    text = b'1.2.3.4:deny\n1.2.3.4:allow\n10.:allow,A="1"\njoe@=h.x:deny\n=:allow,H=""\n'
    buildCdb(str(tmp_path / "r.cdb"), str(tmp_path / "r.tmp"), compileRules(text))
    fromCdb = Rules.fromCdb((tmp_path / "r.cdb").read_bytes())
    fromText = Rules.fromText(text)
    for client in [("1.2.3.4",), ("10.1.1.1",), ("9.9.9.9", "h.x", "joe"), ("9.9.9.9", "h.x")]:
        assert fromCdb.lookup(*client) == fromText.lookup(*client)
    assert fromCdb.lookup("9.9.9.9", "h.x", "joe").deny


def test_looksLikeCdb(tmp_path):
    """A real cdb is recognised; text, short and empty files are not."""
    buildCdb(str(tmp_path / "r.cdb"), str(tmp_path / "r.tmp"), [(b"a", b"")])
    assert looksLikeCdb((tmp_path / "r.cdb").read_bytes())
    assert not looksLikeCdb(b"")
    assert not looksLikeCdb(b"1.2.3.4:allow\n" * 300)
    with pytest.raises(RulesError):
        Rules.fromCdb(b"1.2.3.4:allow\n")


def test_djbErrorText():
    """OS errors are worded as djb's error_str words them."""
    assert djbErrorText(FileNotFoundError(2, "x")) == "file does not exist"
    assert djbErrorText(PermissionError(13, "x")) == "access denied"
    assert djbErrorText(OSError(99999, "x")) == "unknown error"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def seconds(self):
        return self.now


def _replace(path, data):
    """Write-temp-and-rename, as an admin's tcprules run does."""
    tmp = str(path) + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def test_sourceReloadsAtMostOncePerInterval(tmp_path):
    """An edit is seen only after the check interval of the injected clock has passed."""
    path = tmp_path / "tcp.smtp"
    path.write_bytes(b"1.2.3.4:deny\n")
    clock = FakeClock()
    source = RulesSource(str(path), clock=clock)
    assert source.current().lookup("1.2.3.4").deny
    _replace(path, b"1.2.3.4:allow\n")
    clock.now += 0.5
    assert source.current().lookup("1.2.3.4").deny
    clock.now += 0.6
    assert not source.current().lookup("1.2.3.4").deny


def test_sourceCdbDetectedByContent(tmp_path):
    """A cdb is read as a cdb even without the .cdb suffix; .cdb is always a cdb."""
    path = tmp_path / "rules"
    buildCdb(str(path), str(tmp_path / "t"), [(b"1.2.3.4", b"D\0")])
    assert RulesSource(str(path)).current().lookup("1.2.3.4").deny
    bad = tmp_path / "bad.cdb"
    bad.write_bytes(b"1.2.3.4:deny\n")
    with pytest.raises(RulesError):
        RulesSource(str(bad))


def test_sourceSyntaxErrorAtConstructionRaises(tmp_path):
    """A bad text file at start is an error worded as tcprules words it."""
    path = tmp_path / "tcp.smtp"
    path.write_bytes(b"1.2.3.4:allow\nbad:allow#\n")
    with pytest.raises(RulesError) as e:
        RulesSource(str(path))
    assert str(e.value) == "unable to parse this line: bad:allow#"
    assert e.value.path == str(path)


def test_sourceSyntaxErrorAtReloadKeepsLastGood(tmp_path, monkeypatch):
    """A bad edit keeps the previous rules in force and logs one warning."""
    warnings = []
    monkeypatch.setattr(rules.log, "warning", warnings.append)
    path = tmp_path / "tcp.smtp"
    path.write_bytes(b"1.2.3.4:deny\n")
    clock = FakeClock()
    source = RulesSource(str(path), clock=clock)
    _replace(path, b"1.2.3.4:allow\nbad:allow#\n")
    for _ in range(3):
        clock.now += 2
        assert source.current().lookup("1.2.3.4").deny
    assert len(warnings) == 1 and "bad:allow#" in warnings[0]
    _replace(path, b"1.2.3.4:allow\n")
    clock.now += 2
    assert not source.current().lookup("1.2.3.4").deny


def test_sourceMissingFile(tmp_path):
    """A missing file is no error at start, but every lookup then fails until it appears."""
    path = tmp_path / "tcp.smtp.cdb"
    clock = FakeClock()
    source = RulesSource(str(path), clock=clock)
    with pytest.raises(RulesMissing) as e:
        source.current()
    assert str(e.value) == f"unable to read {path}: file does not exist"
    buildCdb(str(path), str(tmp_path / "t"), [(b"", b"D\0")])
    clock.now += 1
    assert source.current().lookup("1.1.1.1").deny
    os.unlink(path)
    clock.now += 1
    with pytest.raises(RulesMissing):
        source.current()


def test_sourceUnreadableAtStartRaises(tmp_path):
    """A rules path that exists but cannot be read is a start-up error (not a silent drop)."""
    with pytest.raises(RulesError) as e:
        RulesSource(str(tmp_path / "x" / "y"), clock=FakeClock()).current()
    assert isinstance(e.value, RulesMissing)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RulesError) as e:
        RulesSource(str(tmp_path / "file" / "y"))
    assert "not a directory" in str(e.value)


def test_defaultSourceFollowsWhichFileExists(tmp_path):
    """
    Without a named rules file a listener uses NAME.cdb, else NAME, else no rules, chosen
    again at each check: a file made after start-up takes effect, a cdb compiled from the
    text takes over from it, and removing the cdb falls back to the text.  Once a file has
    been in force, none at all drops connections (fail closed) until one is back.
    """
    text, cdb = tmp_path / "qmqp", tmp_path / "qmqp.cdb"
    clock = FakeClock()
    source = DefaultRulesSource([str(cdb), str(text)], clock=clock)
    assert source.current() is None and source.path is None
    _replace(text, b"127.0.0.1:deny\n")
    clock.now += 0.5
    assert source.current() is None
    clock.now += 0.6
    assert source.current().lookup("127.0.0.1").deny and source.path == str(text)
    buildCdb(str(cdb), str(tmp_path / "t"), [(b"127.0.0.1", b"+\0")])
    clock.now += 1
    assert not source.current().lookup("127.0.0.1").deny and source.path == str(cdb)
    os.unlink(cdb)
    clock.now += 1
    assert source.current().lookup("127.0.0.1").deny
    os.unlink(text)
    clock.now += 1
    with pytest.raises(RulesMissing):
        source.current()
    _replace(text, b"127.0.0.1:allow\n")
    clock.now += 1
    assert not source.current().lookup("127.0.0.1").deny


def test_defaultSourceBadFile(tmp_path):
    """A bad file there at start is a start-up error, as for a named one; one that appears
    later drops connections (RulesError) until it is fixed, rather than letting all in."""
    text = tmp_path / "smtp"
    text.write_bytes(b"bad:allow#\n")
    with pytest.raises(RulesError):
        DefaultRulesSource([str(tmp_path / "smtp.cdb"), str(text)], clock=FakeClock())
    os.unlink(text)
    clock = FakeClock()
    source = DefaultRulesSource([str(tmp_path / "smtp.cdb"), str(text)], clock=clock)
    _replace(text, b"bad:allow#\n")
    clock.now += 1
    with pytest.raises(RulesError):
        source.current()
    _replace(text, b"127.0.0.1:deny\n")
    clock.now += 1
    assert source.current().lookup("127.0.0.1").deny


def test_defaultSourceUnreadableCandidateIsNotMissing(tmp_path):
    """
    A candidate that exists but cannot be looked at (a symlink loop here; a rules/
    directory the daemon's user may not enter alike) is not a missing file: at start it
    is a start-up error, and appearing later it drops connections, never letting everyone
    in as no rules would (spec/rules.md §1 step 4: other read errors drop).
    """
    cdb, text = tmp_path / "smtp.cdb", tmp_path / "smtp"
    os.symlink(cdb, cdb)
    with pytest.raises(RulesError):
        DefaultRulesSource([str(cdb), str(text)], clock=FakeClock())
    os.unlink(cdb)
    clock = FakeClock()
    source = DefaultRulesSource([str(cdb), str(text)], clock=clock)
    assert source.current() is None
    os.symlink(cdb, cdb)
    clock.now += 1
    with pytest.raises(RulesError):
        source.current()


def test_sourceTruncatedCdbIsNotReadAsText(tmp_path, monkeypatch):
    """
    A cdb cut short (a cp caught half-way) at a path without .cdb is not rules text that
    happens to hold no rule: at start it is an error; at a reload the previous rules stay.
    """
    warnings = []
    monkeypatch.setattr(rules.log, "warning", warnings.append)
    path = tmp_path / "tcp.smtp"
    buildCdb(str(path), str(tmp_path / "t"), [(b"127.0.0.1", b"+\0")] + [
        (b"10.0.0.%d" % i, b"D\0") for i in range(200)] + [(b"", b"D\0")])
    whole = path.read_bytes()
    for cut in (100, 2060, len(whole) - 10):
        path.write_bytes(whole[:cut])
        with pytest.raises(RulesError):
            RulesSource(str(path))
    path.write_bytes(whole)
    clock = FakeClock()
    source = RulesSource(str(path), clock=clock)
    _replace(path, whole[:2060])
    clock.now += 2
    assert source.current().lookup("10.9.9.9").deny
    assert len(warnings) == 1


def test_sourceUnreadableAtReloadDrops(tmp_path, monkeypatch):
    """A replacement that cannot be read (EACCES for the daemon's user) drops connections
    until it can, as tcpserver does, rather than keeping rules the admin replaced."""
    path = tmp_path / "tcp.smtp"
    path.write_bytes(b":allow\n")
    clock = FakeClock()
    source = RulesSource(str(path), clock=clock)
    _replace(path, b":deny\n")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rules, "open", refused, raising=False)
    clock.now += 2
    with pytest.raises(RulesError) as e:
        source.current()
    assert str(e.value) == f"unable to read {path}: access denied"
    monkeypatch.undo()
    clock.now += 2  # a passing error (EMFILE, EIO): read again at the next check
    assert source.current().lookup("1.2.3.4").deny
