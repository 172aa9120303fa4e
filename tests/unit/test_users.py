"""users/assign, users/cdb and the passwd rules (spec/local.md §1-4)."""

import pytest

from qmailtx import users
from qmailtx.results import Delivered, PermFailure, TempFailure
from qmailtx.users import Assignment, PasswdEntry

SPEC_ASSIGN = (
    b"+:alias:7790:2108:/var/qmail/alias:-::\n"
    b"+joe-:joe:507:100:/home/joe:-::\n"
    b"=joe:joe:507:100:/home/joe:::\n"
    b".\n"
)


class FakeCdb:
    def __init__(self, records):
        self.data = {}
        for k, v in records:
            self.data.setdefault(k, v)

    def get(self, key, default=None):
        return self.data.get(key, default)


def cdbFrom(text):
    return FakeCdb(users.assignRecords(text))


def test_recordsMatchSpecExample():
    """A wildcard line becomes key C{!loc} with NUL-joined fields, and its last byte a wildchar."""
    records = users.assignRecords(b"+joe-:joe:507:100:/home/joe:-::\n.\n")
    assert records == [(b"!joe-", b"joe\x00507\x00100\x00/home/joe\x00-\x00"), (b"", b"-")]


def test_simpleKeyLowercasedWithNul():
    """A simple line's key is C{!} + lowercased local + NUL; text after the sixth colon is dropped."""
    records = users.assignRecords(b"=JoE:joe:1:2:/h:d:e:junk:more\n.\n")
    assert records[0] == (b"!joe\x00", b"joe\x001\x002\x00/h\x00d\x00e")


def test_anyFirstByteButPlusIsSimple():
    """qmail-newu treats any first byte other than C{+} as C{=}."""
    assert users.assignRecords(b"xab:u:1:2:/h:::\n.\n")[0][0] == b"!ab\x00"


def test_wildcharsDistinctFirstSeenOrder():
    """The empty key lists the distinct last bytes of non-empty wildcard locs in first-seen order."""
    text = b"+a-:u:1:1:/h:-::\n+b.:u:1:1:/h:-::\n+c-:u:1:1:/h:-::\n+:u:1:1:/h:-::\n.\n"
    assert users.assignRecords(text)[-1] == (b"", b"-.")


@pytest.mark.parametrize("text", [
    b"=joe:joe:507:100:/home/joe:::\n",          # EOF before the dot line
    b"=joe:joe:507:100:/home/joe::\n.\n",        # only five further colons
    b"=joejoe\n.\n",                              # no colon
    b":joe:joe:507:100:/home/joe:::\n.\n",       # colon is the first byte
    b"=jo\x00e:joe:507:100:/home/joe:::\n.\n",   # NUL
    b"=joe:joe:507:100:/home/joe:::",            # last line unterminated
])
def test_badFormat(text):
    """Every malformation qmail-newu rejects raises AssignFormatError."""
    with pytest.raises(users.AssignFormatError):
        users.assignRecords(text)


def test_dotLineEndsEvenWithoutNewline():
    """A line starting with C{.} ends the file, terminated or not; what follows is ignored."""
    assert users.assignRecords(b"=a:u:1:1:/h:::\n.garbage") == [
        (b"!a\x00", b"u\x001\x001\x00/h\x00\x00"), (b"", b"")]


def test_specLookupExamples():
    """spec §3: joe -> ~joe/.qmail; Joe-Direct -> joe dash - ext Direct; bill -> alias ext bill."""
    cdb = cdbFrom(SPEC_ASSIGN)
    assert users.lookupCdb(cdb, b"joe") == Assignment(b"joe", 507, 100, b"/home/joe", b"", b"")
    assert users.lookupCdb(cdb, b"Joe-Direct") == Assignment(
        b"joe", 507, 100, b"/home/joe", b"-", b"Direct")
    assert users.lookupCdb(cdb, b"bill") == Assignment(
        b"alias", 7790, 2108, b"/var/qmail/alias", b"-", b"bill")


def test_simpleCaseInsensitive():
    """A simple assignment matches its address in any case."""
    assert users.lookupCdb(cdbFrom(SPEC_ASSIGN), b"JOE").user == b"joe"


def test_longerWildcardWins():
    """Among wildcards the longest matching loc wins, its ext = pre + rest of the address."""
    cdb = cdbFrom(b"+a-:short:1:1:/s:-:x:\n+a-b-:long:2:2:/l:-:y-:\n.\n")
    assert users.lookupCdb(cdb, b"a-b-c") == Assignment(b"long", 2, 2, b"/l", b"-", b"y-c")
    assert users.lookupCdb(cdb, b"a-q") == Assignment(b"short", 1, 1, b"/s", b"-", b"xq")


def test_wildcardIncludesLocItself():
    """A wildcard loc matches the bare loc too (rest empty)."""
    cdb = cdbFrom(b"+list-:l:3:3:/l:-::\n.\n")
    assert users.lookupCdb(cdb, b"list-") == Assignment(b"l", 3, 3, b"/l", b"-", b"")


def test_wildcardPrefixOnlyAtWildchar():
    """
    A prefix is tried only if its (lowercased) last byte is a wildchar; wildchars keep the
    assign file's case, so an uppercase wildcard loc like C{+JO} never matches.
    """
    assert users.lookupCdb(cdbFrom(b"+jo:u:1:1:/h:-::\n.\n"), b"joe").ext == b"e"
    assert users.lookupCdb(cdbFrom(b"+JO:u:1:1:/h:-::\n.\n"), b"joe") is None
    cdb = FakeCdb([(b"", b"-"), (b"!jo", b"u\x001\x001\x00/h\x00-\x00")])
    assert users.lookupCdb(cdb, b"joe") is None


def test_simpleBeatsWildcardAndFirstDuplicateWins():
    """A simple entry beats a wildcard; with duplicate keys the first line wins."""
    text = b"+joe:w:1:1:/w:-::\n=joe:first:2:2:/f:::\n=joe:second:3:3:/s:::\n.\n"
    assert users.lookupCdb(cdbFrom(text), b"joe").user == b"first"


def test_restKeepsOriginalCase():
    """The ext of a wildcard hit keeps the address's original case."""
    assert users.lookupCdb(cdbFrom(SPEC_ASSIGN), b"JOE-MiXed").ext == b"MiXed"


def test_cdbWithoutWildcharsKeyIsTrouble():
    """A users/cdb without the empty key is a temporary failure with qmail-lspawn's text."""
    assert users.lookupCdb(FakeCdb([]), b"joe") == users.CDB_TROUBLE
    assert users.CDB_TROUBLE.text == b"Trouble reading users/cdb in qmail-lspawn.\n"


def test_shortRecordIsLspawnBug():
    """A record with fewer than six fields is qmail-lspawn's internal-bug deferral."""
    cdb = FakeCdb([(b"", b""), (b"!x\x00", b"u\x001\x002")])
    assert isinstance(users.lookupCdb(cdb, b"x"), TempFailure)


class Passwd:
    def __init__(self, entries, homes):
        self.entries = {e.name: e for e in entries}
        self.homes = homes
        self.asked = []

    def getpwnam(self, name):
        self.asked.append(name)
        return self.entries.get(name)

    def homeOwner(self, path):
        owner = self.homes.get(path)
        if isinstance(owner, OSError):
            raise owner
        if owner is None:
            raise FileNotFoundError(2, "nope")
        return owner


JOE = PasswdEntry(b"joe", 500, 50, b"/home/joe")
ALIAS = PasswdEntry(b"alias", 600, 60, b"/var/qmail/alias")


def lookup(local, entries=(JOE, ALIAS), homes=None):
    pw = Passwd(entries, homes if homes is not None else {b"/home/joe": 500})
    return users.lookupPasswd(local, pw.getpwnam, pw.homeOwner), pw


def test_candidatesLongestFirst():
    """Candidates: LOCAL, then each prefix before a C{-}, longest first, lowercased."""
    assert list(users.passwdCandidates(b"Joe-a-B")) == [
        (b"joe-a-b", b"", b""), (b"joe-a", b"-", b"B"), (b"joe", b"-", b"a-B")]


def test_candidatesShorterThan32():
    """Only candidates shorter than 32 bytes are looked up."""
    local = b"a" * 32 + b"-x"
    assert list(users.passwdCandidates(local)) == []
    assert [c[0] for c in users.passwdCandidates(b"b" * 31 + b"-x")] == [b"b" * 31]


def test_exactUser():
    """LOCAL naming a user: dash and ext empty."""
    assert lookup(b"joe")[0] == Assignment(b"joe", 500, 50, b"/home/joe", b"", b"")


def test_userExt():
    """A prefix user: dash C{-}, ext the rest in original case."""
    assert lookup(b"joe-Foo-bar")[0] == Assignment(b"joe", 500, 50, b"/home/joe", b"-", b"Foo-bar")


def test_uppercaseFallsToAlias():
    """spec §4 example: PoStMaStEr (no such user) goes to alias with ext in original case."""
    assert lookup(b"PoStMaStEr")[0] == Assignment(
        b"alias", 600, 60, b"/var/qmail/alias", b"-", b"PoStMaStEr")


def test_rootSkipped():
    """A uid 0 entry is never a user."""
    root = PasswdEntry(b"root", 0, 0, b"/root")
    assert lookup(b"root", (root, ALIAS), {b"/root": 0})[0].user == b"alias"


def test_homeNotOwnedSkipped():
    """A user whose home is owned by someone else, or missing, is skipped."""
    assert lookup(b"joe", homes={b"/home/joe": 501})[0].user == b"alias"
    assert lookup(b"joe", homes={})[0].user == b"alias"


def test_temporaryStatIsNfsFailure():
    """A temporary stat error on the home is C{NFS failure in qmail-local.}"""
    result = lookup(b"joe", homes={b"/home/joe": OSError(5, "io")})[0]
    assert result == users.NFS_TROUBLE


def test_noAlias():
    """No user and no alias: C{Unable to find alias user!} (temporary)."""
    assert lookup(b"nobody", (JOE,))[0] == users.NO_ALIAS


def test_passwdTroubleTemporary():
    """An error from the passwd lookup is qmail-lspawn's temporary failure."""
    def broken(name):
        raise OSError(26, "busy")
    assert users.lookupPasswd(b"joe", broken, None) == users.PASSWD_TROUBLE


def test_assignRecipientSpawnerChecks():
    """spec §1: no C{@} is permanent; empty local is trashed (K, empty); uid 0 refused."""
    pw = Passwd([JOE, ALIAS], {b"/home/joe": 500})
    assert users.assignRecipient(b"joe", None, pw.getpwnam, pw.homeOwner) == users.NO_HOST
    assert isinstance(users.NO_HOST, PermFailure)
    assert users.assignRecipient(b"@host", None, pw.getpwnam, pw.homeOwner) == Delivered(b"")
    cdb = cdbFrom(b"=r:root:0:0:/root:::\n.\n")
    assert users.assignRecipient(b"r@h", cdb, pw.getpwnam, pw.homeOwner) == users.ROOT_DELIVERY


def test_assignRecipientSplitsAtLastAt():
    """The recipient splits at the last C{@}; cdb is consulted before passwd."""
    pw = Passwd([JOE, ALIAS], {b"/home/joe": 500})
    found = users.assignRecipient(b"a@b@example.com", cdbFrom(SPEC_ASSIGN), pw.getpwnam,
                                  pw.homeOwner)
    assert found[1:] == (b"a@b", b"example.com")
    assert found[0].user == b"alias" and found[0].ext == b"a@b"
    assert pw.asked == []


def test_assignRecipientCdbMissFallsToPasswd():
    """With a users/cdb that has no hit, the passwd rules decide."""
    pw = Passwd([JOE, ALIAS], {b"/home/joe": 500})
    cdb = cdbFrom(b"=other:o:9:9:/o:::\n.\n")
    found = users.assignRecipient(b"joe-x@h", cdb, pw.getpwnam, pw.homeOwner)
    assert found[0] == Assignment(b"joe", 500, 50, b"/home/joe", b"-", b"x")


def test_unreadableCdbIsTrouble(tmp_path):
    """users/cdb absent -> None; present but garbage -> CDB_TROUBLE."""
    assert users.openUsersCdb(str(tmp_path / "cdb")) is None
    (tmp_path / "cdb").write_bytes(b"short")
    assert users.openUsersCdb(str(tmp_path / "cdb")) == users.CDB_TROUBLE
