"""
Remote address selection and report mapping (spec/remote.md §2, §3, §5, §6, §7), with a
resolver double: routes, literal IPs, MX order and shuffling, A/AAAA fallback, Null MX,
temporary DNS failure, the self-MX rule, MXPS, the timeout table, qmail-rspawn's mapping.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError

from qmailtx import remote
from qmailtx.remote import RemoteDeliverer, combine, reportAlone
from qmailtx.remoteroute import (
    TimeoutTable, findRoute, keyTable, literalAddress, mxpsQMTP)
from qmailtx.results import Delivered, PermFailure, TempFailure
from qmailtx.smtpdialogue import Failed


class FakeResolver:
    """Answers from dicts; an exception instance as a value is raised as the failure."""

    def __init__(self, mx=None, a=None, aaaa=None):
        self.mx, self.a, self.aaaa = mx or {}, a or {}, aaaa or {}

    def _answer(self, table, name, make):
        value = table.get(name.lower(), DNSNameError(name))
        if isinstance(value, Exception):
            return defer.fail(value)
        return defer.succeed(([make(name, v) for v in value], [], []))

    def lookupMailExchange(self, name):
        return self._answer(self.mx, name, lambda n, v: dns.RRHeader(
            n, dns.MX, payload=dns.Record_MX(v[0], v[1])))

    def lookupAddress(self, name):
        return self._answer(self.a, name, lambda n, v: dns.RRHeader(
            n, dns.A, payload=dns.Record_A(v)))

    def lookupIPV6Address(self, name):
        return self._answer(self.aaaa, name, lambda n, v: dns.RRHeader(
            n, dns.AAAA, payload=dns.Record_AAAA(v)))


class Controls:
    path = "/nonexistent"


def candidates(resolver, host=b"example.org", ipme=(b"127.0.0.1",), mxps=True, seed=1):
    deliverer = RemoteDeliverer(Controls(), Clock(), resolver, ipme=ipme, smtpPort=2525,
                                qmtpPort=2209, rng=random.Random(seed))
    out = []
    deliverer._candidates(host, None, False, mxps).addBoth(out.append)
    result = out[0]
    if hasattr(result, "value"):
        assert isinstance(result.value, Failed), result
        return result.value.report
    return [(c.preference, c.address, c.port, c.qmtp) for c in result]


def test_mxOrderWithAddresses():
    """MX hosts by preference, each host's A then AAAA addresses at its preference."""
    r = FakeResolver(mx={"example.org": [(20, "b.mx"), (10, "a.mx")]},
                     a={"a.mx": ["10.0.0.1"], "b.mx": ["10.0.0.2"]},
                     aaaa={"a.mx": ["2001:db8::1"], "b.mx": []})
    assert candidates(r) == [(10, b"10.0.0.1", 2525, False), (10, b"2001:db8::1", 2525, False),
                             (20, b"10.0.0.2", 2525, False)]


def test_equalPreferencesShuffled():
    """Equal preferences come in random order: over seeds, both orders are seen."""
    r = FakeResolver(mx={"example.org": [(10, "a.mx"), (10, "b.mx"), (5, "c.mx")]},
                     a={"a.mx": ["10.0.0.1"], "b.mx": ["10.0.0.2"], "c.mx": ["10.0.0.3"]},
                     aaaa={})
    orders = {tuple(x[1] for x in candidates(r, seed=s)) for s in range(20)}
    assert orders == {(b"10.0.0.3", b"10.0.0.1", b"10.0.0.2"),
                      (b"10.0.0.3", b"10.0.0.2", b"10.0.0.1")}


def test_aFallback():
    """No MX records (NXDOMAIN on MX, or NODATA): the host's own A/AAAA at preference 0."""
    r = FakeResolver(mx={"example.org": []}, a={"example.org": ["10.0.0.9"]})
    assert candidates(r) == [(0, b"10.0.0.9", 2525, False)]
    r = FakeResolver(a={"example.org": ["10.0.0.9"]}, aaaa={"example.org": ["::9"]})
    assert candidates(r) == [(0, b"10.0.0.9", 2525, False), (0, b"::9", 2525, False)]


def test_noSuchHost():
    """MX and A both NXDOMAIN: permanent 'couldn't find any host named H'."""
    assert candidates(FakeResolver()) == (
        b"DSorry, I couldn't find any host named example.org. (#5.1.2)\n")


def test_temporaryDNS():
    """A SERVFAIL on MX is the #4.1.2 deferral; so is an MX whose hosts fail temporarily."""
    assert candidates(FakeResolver(mx={"example.org": DNSServerError("x")})) == remote.TEMP_DNS
    r = FakeResolver(mx={"example.org": [(10, "a.mx")]},
                     a={"a.mx": DNSServerError("x")}, aaaa={"a.mx": DNSServerError("x")})
    assert candidates(r) == remote.TEMP_DNS


def test_noAddressAtAll():
    """MX hosts that do not exist: 'couldn't find a mail exchanger or IP address' (#5.4.4)."""
    r = FakeResolver(mx={"example.org": [(10, "gone.mx")]})
    assert candidates(r) == remote.NO_MX


def test_nullMX():
    """RFC 7505 Null MX (preference 0, exchange '.'): a permanent failure."""
    r = FakeResolver(mx={"example.org": [(0, "")]})
    assert candidates(r) == (
        b"DSorry, example.org does not accept mail (null MX). (#5.1.10)\n")


def test_selfMX():
    """Only addresses preferred over this host's own are tried; none left is #5.4.6."""
    r = FakeResolver(mx={"example.org": [(10, "me.mx"), (20, "other.mx"), (5, "best.mx")]},
                     a={"me.mx": ["127.0.0.1"], "other.mx": ["10.0.0.2"],
                        "best.mx": ["10.0.0.5"]})
    assert candidates(r) == [(5, b"10.0.0.5", 2525, False)]
    r = FakeResolver(mx={"example.org": [(10, "me.mx"), (20, "other.mx")]},
                     a={"me.mx": ["127.0.0.1"], "other.mx": ["10.0.0.2"]})
    assert candidates(r) == remote.AMBIGUOUS_MX


def test_literalIP():
    """A literal IP (bare or bracketed) is used as is, at preference 0, self rule applied."""
    assert candidates(FakeResolver(), host=b"[10.1.2.3]") == [(0, b"10.1.2.3", 2525, False)]
    assert candidates(FakeResolver(), host=b"127.0.0.1") == remote.AMBIGUOUS_MX
    assert literalAddress(b"1.2.3") is None and literalAddress(b"[IPv6:::1]") == b"::1"


def test_mxps():
    """MXPS preferences announce QMTP (port 209) when enabled; mod 16 == 0 means SMTP."""
    assert mxpsQMTP(12801) and mxpsQMTP(12817) and not mxpsQMTP(12800)
    assert not mxpsQMTP(12802) and not mxpsQMTP(1) and not mxpsQMTP(13057)
    r = FakeResolver(mx={"example.org": [(12801, "q.mx"), (12816, "s.mx")]},
                     a={"q.mx": ["10.0.0.1"], "s.mx": ["10.0.0.2"]})
    assert candidates(r) == [(12801, b"10.0.0.1", 2209, True), (12816, b"10.0.0.2", 2525, False)]
    assert candidates(r, mxps=False)[0] == (12801, b"10.0.0.1", 2525, False)


def test_routes():
    """smtproutes: exact host, dot-suffixes longest first, the default; empty relay = MX."""
    lines = [b".af.mil:", b":heaven.af.mil", b"Example.ORG:relay.example:2525",
             b"lit.example:[10.0.0.1]", b"auth.example:smart.example:587|user|pa:ss",
             b"bad line"]
    assert findRoute(lines, b"x.af.mil", 25) is None
    assert findRoute(lines, b"af.mil", 25).relay == b"heaven.af.mil"
    assert findRoute(lines, b"elsewhere.com", 25).port == 25
    r = findRoute(lines, b"example.org", 25)
    assert (r.relay, r.port) == (b"relay.example", 2525)
    assert findRoute(lines, b"lit.example", 209).port == 209
    r = findRoute(lines, b"auth.example", 25)
    assert (r.port, r.credentials.user, r.credentials.password) == (587, b"user", b"pa:ss")
    assert findRoute([], b"x", 25) is None


def test_duplicateKeysLastLineWins():
    """
    A key given twice in smtproutes, qmtproutes or tlsdestinations: the last line counts,
    as in qmail, whose constmap puts each later line ahead of the earlier ones.
    """
    lines = [b"example.org:first.example", b"EXAMPLE.org:second.example:2525",
             b":default1.example", b":default2.example"]
    r = findRoute(lines, b"example.org", 25)
    assert (r.relay, r.port) == (b"second.example", 2525)
    assert findRoute(lines, b"elsewhere.example", 25).relay == b"default2.example"
    assert keyTable([b"secure.test:ca1.pem", b"secure.test", b"Secure.Test:ca2.pem"],
                    needColon=False) == {b"secure.test": b"ca2.pem"}


def test_timeoutTable():
    """Two connect timeouts >= 120 s apart mark an address bad for (60+pid%32)*64 s."""
    clock = Clock()
    t = TimeoutTable(clock, pid=0)
    t.failed(b"10.0.0.1", timedOut=True)
    clock.advance(60)
    t.failed(b"10.0.0.1", timedOut=True)
    assert not t.isBad(b"10.0.0.1")
    clock.advance(61)
    t.failed(b"10.0.0.1", timedOut=True)
    assert t.isBad(b"10.0.0.1")
    clock.advance(60 * 64 - 1)
    assert t.isBad(b"10.0.0.1")
    clock.advance(2)
    assert not t.isBad(b"10.0.0.1")
    t.failed(b"10.0.0.1", timedOut=False)
    t.failed(b"10.0.0.2", timedOut=False)
    assert not t.isBad(b"10.0.0.2")


@pytest.mark.parametrize("rcpt,message,expected", [
    (b"r", b"K1.2.3.4 accepted message.\nRemote host said: 250 ok 1732217160 qp 99\n",
     Delivered(b"1.2.3.4 accepted message.\nRemote host said: 250 ok 1732217160 qp 99\n")),
    (b"h1.2.3.4 does not like recipient.\nRemote host said: 550 no such user\n",
     b"DGiving up on 1.2.3.4.\n",
     PermFailure(b"1.2.3.4 does not like recipient.\nRemote host said: 550 no such user\n"
                 b"Giving up on 1.2.3.4.\n")),
    (b"s1.2.3.4 does not like recipient.\nRemote host said: 450 later\n",
     b"DGiving up on 1.2.3.4.\n",
     TempFailure(b"1.2.3.4 does not like recipient.\nRemote host said: 450 later\n"
                 b"Giving up on 1.2.3.4.\n")),
    (b"s1.2.3.4 does not like recipient.\n", b"K1.2.3.4 accepted message.\n",
     TempFailure(b"1.2.3.4 does not like recipient.\n")),
    (b"r", b"ZConnected to 1.2.3.4 but connection died. Possible duplicate! (#4.4.2)\n",
     TempFailure(b"Connected to 1.2.3.4 but connection died. Possible duplicate! (#4.4.2)\n")),
    (None, b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n",
     TempFailure(b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n")),
])
def test_combine(rcpt, message, expected):
    """qmail-rspawn: h => D, s => Z, r => the message's letter; text as spec/remote.md §5."""
    assert combine(rcpt, message) == expected


@pytest.mark.parametrize("rcpt,message,alone", [
    (b"h1.2.3.4 does not like recipient.\nRemote host said: 550 no\n",
     b"K1.2.3.4 accepted message.\n", b"DGiving up on 1.2.3.4.\n"),
    (b"s::1 does not like recipient.\nRemote host said: 450 later\n",
     b"Z::1 failed on DATA command.\n", b"DGiving up on ::1.\n"),
    (b"r", b"K1.2.3.4 accepted message.\n", b"K1.2.3.4 accepted message.\n"),
    (None, b"ZUnable to read message. (#4.3.0)\n", b"ZUnable to read message. (#4.3.0)\n"),
    (b"hno such user\n", b"Kok 1 qp 2", b"Kok 1 qp 2"),
])
def test_reportAlone(rcpt, message, alone):
    """
    One recipient of a batched SMTP transaction gets the message report qmail-remote would
    have given running for it alone: a refused RCPT ends that run with 'Giving up on IP.'
    whatever the others got; a QMTP refusal (its text names no IP) keeps the message's.
    """
    assert reportAlone(rcpt, message) == alone
