"""Recipient rewriting and VERP senders (spec/queue.md §5, §8)."""

import pytest

from qmailtx.control import ControlDir
from qmailtx.rewrite import LOCAL, REMOTE, Rewriter, verpSender, virtualdomainsMap


def rw(**kw):
    kw.setdefault("envnoathost", b"here.org")
    kw.setdefault("locals", frozenset([b"here.org", b"localhost"]))
    if "virtualdomains" in kw:
        kw["virtualdomains"] = virtualdomainsMap(kw["virtualdomains"])
    return Rewriter(**kw)


def test_noAtGetsEnvnoathost():
    """No C{@}: C{@envnoathost} is appended (and then it is local)."""
    assert rw().rewrite(b"joe") == (LOCAL, b"joe@here.org")


def test_localsCaseInsensitiveKeepsCase():
    """A locals domain matches case-insensitively; the address keeps its case."""
    assert rw().rewrite(b"Joe@HERE.Org") == (LOCAL, b"Joe@HERE.Org")


def test_remoteUnchanged():
    """Anything else is remote, unchanged."""
    assert rw().rewrite(b"x@elsewhere.com") == (REMOTE, b"x@elsewhere.com")


def test_percenthackRepeats():
    """percenthack turns the last C{%} into C{@} while the domain is listed."""
    r = rw(percenthack=frozenset([b"gw", b"c"]))
    assert r.rewrite(b"a%b%c@gw") == (REMOTE, b"a@b")
    r = rw(percenthack=frozenset([b"gw"]))
    assert r.rewrite(b"a%b%c@GW") == (REMOTE, b"a%b@c")
    assert r.rewrite(b"plain@gw") == (REMOTE, b"plain@gw")


def test_virtualdomainSpecExample():
    """C{info@nowhere.mil} + C{nowhere.mil:joe-foo} gives local C{joe-foo-info@nowhere.mil}."""
    r = rw(virtualdomains=[b"nowhere.mil:joe-foo"])
    assert r.rewrite(b"info@nowhere.mil") == (LOCAL, b"joe-foo-info@nowhere.mil")


def test_virtualKeyOrder():
    """Keys: whole address, domain, C{.}-suffixes longest first, then the catch-all."""
    r = rw(virtualdomains=[b"u@a.b.c:user", b"a.b.c:dom", b".b.c:suf2", b".c:suf1", b":all"])
    assert r.rewrite(b"u@a.b.c") == (LOCAL, b"user-u@a.b.c")
    assert r.rewrite(b"v@a.b.c") == (LOCAL, b"dom-v@a.b.c")
    assert r.rewrite(b"v@x.b.c") == (LOCAL, b"suf2-v@x.b.c")
    assert r.rewrite(b"v@x.y.c") == (LOCAL, b"suf1-v@x.y.c")
    assert r.rewrite(b"v@other") == (LOCAL, b"all-v@other")


def test_exceptionBeatsCatchAll():
    """An empty prepend is an exception: remote, unchanged, even with a catch-all."""
    r = rw(virtualdomains=[b"ex.com:", b":all"])
    assert r.rewrite(b"a@ex.com") == (REMOTE, b"a@ex.com")
    assert r.rewrite(b"a@sub.ex.com") == (LOCAL, b"all-a@sub.ex.com")


def test_localsBeforeVirtual():
    """A locals domain is local even if virtualdomains lists it."""
    assert rw(virtualdomains=[b"here.org:x"]).rewrite(b"a@here.org") == (LOCAL, b"a@here.org")


def test_virtualdomainsMapLastWinsAndIgnoresNoColon():
    """Lines without C{:} are ignored; keys split at the first C{:}; a later duplicate wins."""
    assert virtualdomainsMap([b"A.com:x:y", b"nocolon", b"a.com:z"]) == {b"a.com": b"z"}


def test_fromControls(tmp_path):
    """Controls: locals defaults to me, envnoathost to me."""
    (tmp_path / "me").write_bytes(b"me.example\n")
    (tmp_path / "virtualdomains").write_bytes(b"v.example:vu\n")
    r = Rewriter.fromControls(ControlDir(str(tmp_path)))
    assert r.rewrite(b"joe") == (LOCAL, b"joe@me.example")
    assert r.rewrite(b"a@v.example") == (LOCAL, b"vu-a@v.example")


def test_fromControlsRefusesWithoutLocalsOrMe(tmp_path):
    """Without locals and me qmail-send refuses to start."""
    with pytest.raises(ValueError):
        Rewriter.fromControls(ControlDir(str(tmp_path)))


def test_verpSender():
    """C{list-owner-@ex.com-@[]} to C{joe@x.org} is C{list-owner-joe=x.org@ex.com}."""
    assert verpSender(b"list-owner-@ex.com-@[]", b"joe@x.org") == b"list-owner-joe=x.org@ex.com"
    assert verpSender(b"list-owner-@ex.com-@[]", b"joe") == b"list-owner-@ex.com-@[]"
    assert verpSender(b"joe@ex.com", b"joe@x.org") == b"joe@ex.com"
    assert verpSender(b"nohost-@[]", b"joe@x.org") == b"nohost-@[]"
