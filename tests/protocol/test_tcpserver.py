"""
L{qmailtx.tcpserver.RulesFactory} over in-memory transports: the tcpserver environment,
rules (allow, deny, variables, missing file), the concurrency and per-IP limits, handing
off to the inner protocol, PTR names and log lines (spec/rules.md §1, §5, §6).
"""

import pytest
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.names import dns
from twisted.python.failure import Failure

from qmailtx.rules import Rules, RulesSource
from qmailtx.tcpserver import PER_IP_RECHECK, RulesFactory, addressText, reverseName

BUSY = b"421 too many connections from your address (#4.3.2)\r\n"


class Inner(protocol.Protocol):
    """Records what the rules layer gave it."""

    def connectionMade(self):
        self.factory.made.append(self)
        self.envAtConnect = dict(self.env)
        self.received = b""
        self.lost = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class InnerFactory(protocol.ServerFactory):
    protocol = Inner

    def __init__(self, busyReply=BUSY):
        self.made = []
        self.busyReply = busyReply
        self.started = 0
        self.stopped = 0

    def startFactory(self):
        self.started += 1

    def stopFactory(self):
        self.stopped += 1


class FakePort:
    def __init__(self):
        self.reading = True
        self.calls = []

    def stopReading(self):
        self.reading = False
        self.calls.append("stop")

    def startReading(self):
        self.reading = True
        self.calls.append("start")


class Transport(StringTransportWithDisconnection):
    """A server-side transport that knows its protocol, like tcp.Server."""

    def __init__(self, peer, host, sessionno):
        StringTransportWithDisconnection.__init__(self, hostAddress=host, peerAddress=peer)
        self.sessionno = sessionno
        self.nodelay = False
        self.paused = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


def lines(events):
    return [(e.get("log_system"), e["qmail"]) for e in events if "qmail" in e]


class Harness:
    """A RulesFactory with a fake port; C{connect()} plays tcp.Port's accept."""

    def __init__(self, **kw):
        self.inner = InnerFactory(**kw.pop("innerKw", {}))
        self.factory = RulesFactory(self.inner, "smtp", reactor=Clock(), **kw)
        self.port = FakePort()
        self.factory.setPort(self.port)
        self.sessions = 0

    def connect(self, ip="1.2.3.4", port=40000, local=("127.0.0.1", 25)):
        addrType = IPv6Address if ":" in ip else IPv4Address
        peer = addrType("TCP", ip, port)
        host = (IPv6Address if ":" in local[0] else IPv4Address)("TCP", *local)
        self.sessions += 1
        gate = self.factory.buildProtocol(peer)
        transport = Transport(peer, host, self.sessions)
        transport.protocol = gate
        gate.makeConnection(transport)
        return transport


def test_envForPlainClient():
    """Without rules the inner protocol gets exactly tcpserver -H -R's variables, before connectionMade."""
    h = Harness()
    t = h.connect("1.2.3.4", 40001)
    [p] = h.inner.made
    assert p.envAtConnect == {
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "25",
        "TCPREMOTEIP": "1.2.3.4",
        "TCPREMOTEPORT": "40001",
    }
    assert t.protocol is p and p.transport is t
    assert t.nodelay is True
    assert isinstance(p, Inner)


def test_localHostnameAndIPv6():
    """-l sets TCPLOCALHOST; an IPv4-mapped client shows as dotted IPv4, plain IPv6 as text."""
    h = Harness(localHostname="mx.example.com")
    h.connect("::ffff:10.1.2.3", local=("::ffff:127.0.0.1", 25))
    h.connect("2001:db8::1", local=("::1", 25))
    a, b = h.inner.made
    assert a.env["TCPLOCALHOST"] == "mx.example.com"
    assert (a.env["TCPREMOTEIP"], a.env["TCPLOCALIP"]) == ("10.1.2.3", "127.0.0.1")
    assert (b.env["TCPREMOTEIP"], b.env["TCPLOCALIP"]) == ("2001:db8::1", "::1")
    assert addressText("::ffff:1.2.3.4") == "1.2.3.4"


def test_rulesSetAndOverrideVariables():
    """A matching rule's variables are applied over tcpserver's own."""
    rules = Rules.fromText(b'1.2.3.:allow,RELAYCLIENT="",TCPREMOTEIP="9.9.9.9"\n')
    h = Harness(rules=rules)
    h.connect("1.2.3.4")
    [p] = h.inner.made
    assert p.env["RELAYCLIENT"] == "" and p.env["TCPREMOTEIP"] == "9.9.9.9"


def test_denyClosesWithoutAByte(logEvents):
    """A deny rule closes the connection without running the protocol or writing anything."""
    h = Harness(rules=Rules.fromText(b"1.2.3.4:deny\n"))
    t = h.connect("1.2.3.4", 40002)
    assert h.inner.made == [] and t.value() == b"" and not t.connected
    assert h.factory.active == 0
    assert ("smtp", "tcpserver: deny 1 :127.0.0.1:25 :1.2.3.4::40002") in lines(logEvents)


def test_okLogLine(logEvents):
    """An admitted client is logEvents as tcpserver -v does, under the service name."""
    h = Harness(localHostname="mx.example.com")
    h.connect("1.2.3.4", 40003)
    assert ("smtp", "tcpserver: ok 1 mx.example.com:127.0.0.1:25 :1.2.3.4::40003") in lines(
        logEvents
    )


def test_missingRulesDropsConnection(tmp_path, logEvents):
    """A configured rules file that does not exist drops every client, with tcpserver's warning."""
    path = tmp_path / "tcp.smtp.cdb"
    h = Harness(rules=RulesSource(str(path)))
    t = h.connect()
    assert h.inner.made == [] and t.value() == b"" and not t.connected
    assert (
        "smtp",
        f"tcpserver: warning: dropping connection, unable to read {path}: file does not exist",
    ) in lines(logEvents)
    assert h.factory.active == 0


def test_rulesReloadWithoutRestart(tmp_path):
    """An edited rules file applies to the next connection once its check interval passed."""
    path = tmp_path / "tcp.smtp"
    path.write_bytes(b"1.2.3.4:deny\n")
    clock = Clock()
    h = Harness(rules=RulesSource(str(path), clock=clock))
    assert not h.connect().connected
    path.write_bytes(b"1.2.3.4:allow,X=/1/\n")
    clock.advance(1)
    h.connect()
    assert h.inner.made[0].env["X"] == "1"


def test_limitStopsAcceptingAndResumes(logEvents):
    """At maxConnections the port stops accepting; a close frees the slot and accepting resumes."""
    h = Harness(maxConnections=2)
    a = h.connect()
    assert h.port.reading
    b = h.connect()
    assert not h.port.reading and h.factory.active == 2
    assert ("smtp", "tcpserver: status: 2/2") in lines(logEvents)
    a.loseConnection()
    assert h.inner.made[0].lost
    assert h.port.reading and h.factory.active == 1
    assert h.port.calls == ["stop", "start"]
    b.loseConnection()
    assert h.factory.active == 0


def test_overshootWaitsUnanswered():
    """
    Connections accepted beyond the limit in one accept batch wait paused, get nothing,
    and are admitted in order as slots free.
    """
    h = Harness(maxConnections=1)
    a = h.connect(port=1)
    b = h.connect(port=2)
    c = h.connect(port=3)
    assert len(h.inner.made) == 1 and b.paused and c.paused
    assert b.value() == b"" and h.factory.active == 1
    a.loseConnection()
    assert [p.env["TCPREMOTEPORT"] for p in h.inner.made] == ["1", "2"]
    assert not b.paused and c.paused and not h.port.reading
    b.loseConnection()
    c.loseConnection()
    assert h.factory.active == 0 and h.port.reading
    assert len(h.inner.made) == 3


def test_perIPLimit(logEvents):
    """Over maxPerIP a client gets the inner factory's busy reply and is closed; others are not affected."""
    h = Harness(maxPerIP=2)
    a = h.connect("1.2.3.4")
    h.connect("1.2.3.4")
    c = h.connect("1.2.3.4", 40009)
    assert c.value() == b"" and c.connected
    h.factory.reactor.advance(PER_IP_RECHECK)
    assert c.value() == BUSY and not c.connected and len(h.inner.made) == 2
    assert ("smtp", "tcpserver: busy 3 :127.0.0.1:25 :1.2.3.4::40009") in lines(logEvents)
    h.connect("5.6.7.8")
    assert len(h.inner.made) == 3
    a.loseConnection()
    d = h.connect("1.2.3.4")
    assert d.connected and len(h.inner.made) == 4
    assert h.factory.active == 3 and h.factory._perIP == {"1.2.3.4": 2, "5.6.7.8": 1}


def test_perIPLimitWithoutBusyReply():
    """A factory without busyReply gets a silent close over the per-IP limit."""
    h = Harness(maxPerIP=1, innerKw={"busyReply": None})
    del h.inner.busyReply
    h.connect()
    t = h.connect()
    h.factory.reactor.advance(PER_IP_RECHECK)
    assert t.value() == b"" and not t.connected


def test_perIPLimitCountsASessionThatJustEnded():
    """A client reconnecting the moment its session ended, before that end is counted (it
    comes in the same batch of events, or from a receiver), is let in: the limit is looked
    at once more PER_IP_RECHECK later."""
    h = Harness(maxPerIP=1)
    first = h.connect("1.2.3.4")
    again = h.connect("1.2.3.4", 40010)
    assert again.connected and len(h.inner.made) == 1
    first.loseConnection()
    h.factory.reactor.advance(PER_IP_RECHECK)
    assert again.connected and again.value() == b"" and len(h.inner.made) == 2
    assert h.factory._perIP == {"1.2.3.4": 1}


def test_deniedClientNotCountedPerIP():
    """A denied client never takes a per-IP slot."""
    h = Harness(maxPerIP=1, rules=Rules.fromText(b"1.2.3.4:deny\n"))
    h.connect("1.2.3.4")
    h.connect("1.2.3.4")
    assert h.factory._perIP == {}


def test_innerFactoryRefuses():
    """A wrapped factory returning None closes the connection and frees its slots."""
    h = Harness(maxPerIP=1)
    h.inner.buildProtocol = lambda addr: None
    t = h.connect()
    assert not t.connected and h.factory.active == 0 and h.factory._perIP == {}


def test_factoryStartStopForwarded():
    """Starting and stopping the wrapper starts and stops the wrapped factory."""
    h = Harness()
    h.factory.doStart()
    h.factory.doStop()
    assert (h.inner.started, h.inner.stopped) == (1, 1)


class FakeResolver:
    def __init__(self, names):
        self.names = names
        self.pending = []

    def lookupPointer(self, name, timeout=None):
        d = defer.Deferred()
        self.pending.append((name, d))
        return d

    def answerAll(self):
        pending, self.pending = self.pending, []
        for name, d in pending:
            target = self.names.get(name)
            if target is None:
                d.errback(Failure(dns.DomainError(name)))
            else:
                rr = dns.RRHeader(name, dns.PTR, payload=dns.Record_PTR(target))
                d.callback(([rr], [], []))


def test_resolverSetsHostsAndHostRules():
    """
    With a resolver, the client waits (paused, nothing written) for PTR answers; names are
    lowercased, and =host rules then apply.
    """
    resolver = FakeResolver(
        {"4.3.2.1.in-addr.arpa": "MX.Spammer.Example", "1.0.0.127.in-addr.arpa": "localhost"}
    )
    rules = Rules.fromText(b"=.spammer.example:allow,SPAM=/1/\n")
    h = Harness(resolver=resolver, rules=rules)
    t = h.connect("1.2.3.4")
    assert t.paused and h.inner.made == []
    resolver.answerAll()
    [p] = h.inner.made
    assert not t.paused
    assert p.env["TCPREMOTEHOST"] == "mx.spammer.example"
    assert p.env["TCPLOCALHOST"] == "localhost"
    assert p.env["SPAM"] == "1"


def test_resolverFailureLeavesHostUnset():
    """No PTR answer means TCPREMOTEHOST is unset, not empty."""
    resolver = FakeResolver({})
    h = Harness(resolver=resolver, localHostname="me")
    h.connect("1.2.3.4")
    assert len(resolver.pending) == 1
    resolver.answerAll()
    [p] = h.inner.made
    assert "TCPREMOTEHOST" not in p.env and p.env["TCPLOCALHOST"] == "me"


def test_clientGoneDuringLookup():
    """A client that leaves while its PTR lookup runs frees its slot and is never handed off."""
    resolver = FakeResolver({})
    h = Harness(resolver=resolver)
    t = h.connect()
    t.loseConnection()
    assert h.factory.active == 0
    resolver.answerAll()
    assert h.inner.made == []


def test_earlyDataReplayed():
    """Bytes read before admission reach the inner protocol, in order."""
    resolver = FakeResolver({})
    h = Harness(resolver=resolver)
    t = h.connect()
    t.protocol.dataReceived(b"EHLO x\r\n")
    resolver.answerAll()
    assert h.inner.made[0].received == b"EHLO x\r\n"


def test_reverseName():
    """PTR names for IPv4 and IPv6 clients."""
    assert reverseName("1.2.3.4") == "4.3.2.1.in-addr.arpa"
    assert reverseName("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")


def test_gateStepsOut():
    """After admission nothing references the gate: the inner protocol is the transport's protocol."""
    import gc
    import weakref

    h = Harness()
    gate = h.factory.buildProtocol(IPv4Address("TCP", "1.2.3.4", 5))
    transport = Transport(gate.addr, IPv4Address("TCP", "127.0.0.1", 25), 1)
    transport.protocol = gate
    gate.makeConnection(transport)
    ref = weakref.ref(gate)
    del gate
    gc.collect()
    assert ref() is None
    transport.protocol.dataReceived(b"x")
    assert h.inner.made[0].received == b"x"


def test_underProtocolWrapper():
    """
    Behind a wrapping factory (as a TLS listener wraps us), the wrapper's wrappedProtocol
    becomes the inner protocol, and a deny closes the TCP connection beneath the wrapper.
    """
    from twisted.protocols.policies import WrappingFactory

    h = Harness(rules=Rules.fromText(b"1.2.3.4:deny\n"))
    outer = WrappingFactory(h.factory)
    for ip in ("5.6.7.8", "1.2.3.4"):
        peer = IPv4Address("TCP", ip, 5)
        wrapper = outer.buildProtocol(peer)
        transport = Transport(peer, IPv4Address("TCP", "127.0.0.1", 25), 1)
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        if ip == "5.6.7.8":
            [p] = h.inner.made
            assert wrapper.wrappedProtocol is p and p.transport is wrapper
            wrapper.dataReceived(b"hello")
            assert p.received == b"hello"
            transport.loseConnection()
            assert p.lost
        else:
            assert not transport.connected and transport.value() == b""
    assert h.factory.active == 0


def test_brokenRulesObjectDropsAndFreesSlot(logEvents):
    """An unexpected error while deciding drops that client and frees its slot."""

    class Broken:
        def lookup(self, *args):
            raise ValueError("boom")

    h = Harness(rules=Broken(), maxConnections=1)
    t = h.connect()
    assert not t.connected and h.factory.active == 0 and h.port.reading
    assert any(e.get("log_failure") for e in logEvents)


def test_waitingClientLeaving():
    """A client that leaves while waiting for a slot never held one and is never admitted."""
    h = Harness(maxConnections=1)
    a = h.connect(port=1)
    b = h.connect(port=2)
    b.loseConnection()
    assert h.factory.active == 1
    a.loseConnection()
    assert h.factory.active == 0 and len(h.inner.made) == 1 and h.port.reading
