""".qmail file choice and line parsing (spec/local.md §6-7)."""

import errno
import stat

import pytest

from qmailtx import dotqmail
from qmailtx.dotqmail import FORWARD, FORWARDONLY, MAILDIR, MBOX, PROGRAM
from qmailtx.results import PermFailure, TempFailure


class View:
    """A fake home: name -> (mode, text) or an OSError to raise."""

    def __init__(self, files):
        self.files = files
        self.tried = []

    def read(self, name, limit):
        self.tried.append(name)
        entry = self.files.get(name)
        if isinstance(entry, OSError):
            raise entry
        if entry is None:
            return None
        return entry

    def exists(self, name):
        entry = self.files.get(name)
        if isinstance(entry, OSError):
            raise entry
        return entry is not None


REG = stat.S_IFREG | 0o644


def names(dash, ext):
    return [n for n, _ in dotqmail.candidates(dash, ext)]


def test_candidatesSpecExamples():
    """spec §6 step 6: the exact name, then -default names at each C{-}, longest first."""
    assert names(b"-", b"a-b") == [b".qmail-a-b", b".qmail-a-default", b".qmail-default"]
    assert names(b"-", b"a-b-") == [
        b".qmail-a-b-", b".qmail-a-b-default", b".qmail-a-default", b".qmail-default"]
    assert names(b"", b"") == [b".qmail", b".qmaildefault"]
    assert names(b"-", b"a") == [b".qmail-a", b".qmail-default"]


def test_safeExtLowercasesAndColons():
    """Extensions are lowercased and dots become colons in file names."""
    assert names(b"-", b"Www.Example-X") == [
        b".qmail-www:example-x", b".qmail-www:example-default", b".qmail-default"]


def test_defaultValueOriginalCase():
    """DEFAULT is the part of ext covered by C{default}, in original case."""
    assert dotqmail.candidates(b"-", b"List-Foo.Bar") == [
        (b".qmail-list-foo:bar", None),
        (b".qmail-list-default", b"Foo.Bar"),
        (b".qmail-default", b"List-Foo.Bar"),
    ]


def test_exactNameEndingInDefaultSetsDefault():
    """An exact name that ends in C{default} sets DEFAULT to that part of ext."""
    found = dotqmail.findDotQmail(b"-", b"x-DEFAULT", View({b".qmail-x-default": (REG, b"&a\n")}))
    assert found.name == b".qmail-x-default" and found.default == b"DEFAULT"


def test_findFirstExisting():
    """The first candidate that is a regular file governs; earlier absent ones are skipped."""
    view = View({b".qmail-a-default": (REG, b"&x\n"), b".qmail-default": (REG, b"&y\n")})
    found = dotqmail.findDotQmail(b"-", b"a-b", view)
    assert (found.name, found.text, found.default, found.forwardOnly) == (
        b".qmail-a-default", b"&x\n", b"b", False)
    assert view.tried == [b".qmail-a-b", b".qmail-a-default"]


def test_exactFileHasNoDefault():
    """The exact file leaves DEFAULT unset."""
    found = dotqmail.findDotQmail(b"-", b"a", View({b".qmail-a": (REG, b"")}))
    assert found.default is None


def test_nonRegularSkipped():
    """A directory (or other non-regular file) does not count."""
    view = View({b".qmail-a": (stat.S_IFDIR | 0o755, b""), b".qmail-default": (REG, b"&d\n")})
    assert dotqmail.findDotQmail(b"-", b"a", view).name == b".qmail-default"


def test_nothingWithDashBounces():
    """Nothing found with a dash: C{Sorry, no mailbox here by that name. (#5.1.1)} (permanent)."""
    result = dotqmail.findDotQmail(b"-", b"zz", View({}))
    assert result == dotqmail.NO_MAILBOX and isinstance(result, PermFailure)
    assert result.text == b"Sorry, no mailbox here by that name. (#5.1.1)\n"


def test_nothingWithoutDashIsEmpty():
    """Nothing found and dash empty: treated like an empty file."""
    found = dotqmail.findDotQmail(b"", b"", View({}))
    assert found.name is None and found.text == b""


def test_writableDotQmail():
    """A world-writable .qmail: C{Uh-oh: .qmail file is writable. (#4.7.0)}; group-writable is fine."""
    assert dotqmail.findDotQmail(b"", b"", View({b".qmail": (REG | 0o002, b"")})) == \
        dotqmail.WRITABLE_DOTQMAIL
    assert dotqmail.findDotQmail(b"", b"", View({b".qmail": (REG | 0o020, b"x")})).text == b"x"


def test_executeBitForwardOnly():
    """The owner-execute bit puts the file in forward-only mode."""
    assert dotqmail.findDotQmail(b"", b"", View({b".qmail": (REG | 0o100, b"&a\n")})).forwardOnly


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EIO])
def test_openErrorsTemporary(code):
    """EACCES/EPERM or a temporary error opening a candidate: 111 C{Unable to open <name>: ...}."""
    result = dotqmail.findDotQmail(b"-", b"a", View({b".qmail-a": OSError(code, "x")}))
    assert isinstance(result, TempFailure)
    assert result.text.startswith(b"Unable to open .qmail-a: ")
    assert result.text.endswith(b". (#4.3.0)\n")


def test_accessDeniedWording():
    """Error texts use qmail's wording."""
    result = dotqmail.findDotQmail(b"-", b"a", View({b".qmail-a": OSError(errno.EACCES, "x")}))
    assert result.text == b"Unable to open .qmail-a: access denied. (#4.3.0)\n"


def test_otherOpenErrorsMeanAbsent():
    """ENOTDIR/ELOOP and the like just mean "not there"."""
    view = View({b".qmail-a": OSError(errno.ELOOP, "x"), b".qmail-default": (REG, b"&d\n")})
    assert dotqmail.findDotQmail(b"-", b"a", view).name == b".qmail-default"


def test_newSenderPlain():
    """Without C{-owner}, NEWSENDER is the sender."""
    assert dotqmail.newSender(b"s@x", b"joe-l", b"h", b"-", b"l", View({})) == b"s@x"


def test_newSenderOwner():
    """With C{.qmail<dash><ext>-owner} (any type), NEWSENDER is C{local-owner@domain}."""
    view = View({b".qmail-l-owner": (stat.S_IFDIR, b"")})
    assert dotqmail.newSender(b"s@x", b"joe-l", b"h", b"-", b"L", view) == b"joe-l-owner@h"


def test_newSenderVerp():
    """With C{-owner-default} as well, NEWSENDER is C{local-owner-@domain-@[]}."""
    view = View({b".qmail-l-owner": (REG, b""), b".qmail-l-owner-default": (REG, b"")})
    assert dotqmail.newSender(b"s@x", b"joe-l", b"h", b"-", b"l", view) == b"joe-l-owner-@h-@[]"


@pytest.mark.parametrize("sender", [b"", b"#@[]"])
def test_newSenderBouncesUnchanged(sender):
    """An empty or double-bounce sender is never replaced."""
    view = View({b".qmail-l-owner": (REG, b"")})
    assert dotqmail.newSender(sender, b"joe-l", b"h", b"-", b"l", view) == sender


def test_newSenderUsesFullExtNotDefault():
    """The -owner check uses the full ext (C{.qmail-a-b-owner}), not the matched default file."""
    view = View({b".qmail-a-owner": (REG, b"")})
    assert dotqmail.newSender(b"s@x", b"u-a-b", b"h", b"-", b"a-b", view) == b"s@x"


def test_instructionTextDefaultDelivery():
    """An empty file uses defaultdelivery and clears forward-only; a newline is appended."""
    empty = dotqmail.DotQmail(b".qmail", b"", True, None)
    assert dotqmail.instructionText(empty, b"./Maildir/") == (b"./Maildir/\n", False)
    full = dotqmail.DotQmail(b".qmail", b"&a", True, None)
    assert dotqmail.instructionText(full, b"./Mailbox") == (b"&a\n", True)


def test_parseEveryLineType():
    """Each first byte dispatches as spec §7, trailing blanks removed first."""
    text = (b"# comment\n./Maildir/ \n/var/mail/joe\t\n|exec prog arg\n&x@y\n& x@y\n"
            b"bob@example.com\n+list\n+other\n\n.mbox\n")
    assert dotqmail.parseLines(text) == [
        (MAILDIR, b"./Maildir/"), (MBOX, b"/var/mail/joe"), (PROGRAM, b"exec prog arg"),
        (FORWARD, b"x@y"), (FORWARD, b" x@y"), (FORWARD, b"bob@example.com"),
        (FORWARDONLY, b""), (MBOX, b".mbox")]


def test_blankFirstLine():
    """A blank (or whitespace-only) first line is C{Uh-oh: first line of .qmail file is blank.}"""
    assert dotqmail.parseLines(b"  \n&a\n") == [(None, dotqmail.BLANK_FIRST_LINE)]
    assert dotqmail.BLANK_FIRST_LINE.text == b"Uh-oh: first line of .qmail file is blank. (#4.2.1)\n"
    assert dotqmail.parseLines(b"&a\n\n&b\n") == [(FORWARD, b"a"), (FORWARD, b"b")]
