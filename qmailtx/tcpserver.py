"""
tcpserver's per-connection work in front of a protocol factory (spec/rules.md §1, §5, §6).

L{RulesFactory} wraps any server factory: it limits concurrent connections the way
C{tcpserver -c} does (stop accepting; clients wait in the kernel backlog), builds the
tcpserver environment, applies the rules, refuses a client over the per-IP limit with the
wrapped factory's C{busyReply}, and then hands the real transport to the inner protocol and
steps out of the data path.  Defaults to C{tcpserver -H -R}: no PTR lookups, no ident.

Writes no files.  Must not import protocol modules (smtp, pop3, ...): it only moves a
connection from the listener to the factory it is given.
"""

import ipaddress
from collections import deque

from twisted.internet import protocol
from twisted.internet.defer import DeferredList, succeed
from twisted.logger import Logger

from qmailtx.nodelay import setNoDelay
from qmailtx.rules import RulesError

DEFAULT_MAX_CONNECTIONS = 40

# Bytes a client may send while its admission waits for a PTR answer (the transport is
# paused meanwhile, so this only catches what was already read).
PREADMISSION_LIMIT = 16 * 1024

# Seconds a PTR lookup may hold a connection slot; later means the name stays unset
# (tcpserver relies on its resolver's own timeouts, which a custom resolver may lack).
PTR_TIMEOUT = 30

# Seconds before a client over its per-IP limit is looked at once more, so that the end of
# its previous session (still in flight, or reported by a receiver) is counted first.
PER_IP_RECHECK = 0.05

_log = Logger(namespace="qmailtx.tcpserver")

_PTR = 12


def addressText(host):
    """Client or server address as tcpserver shows it: IPv4-mapped IPv6 as dotted IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def reverseName(ip):
    """The C{in-addr.arpa}/C{ip6.arpa} name to ask a PTR for."""
    return ipaddress.ip_address(ip.split("%", 1)[0]).reverse_pointer


def _firstPointer(result):
    """The first PTR target of a C{lookupPointer} answer, lowercased, or C{None}."""
    for record in result[0]:
        if record.type == _PTR:
            name = record.payload.name.name
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            return name.lower()
    return None


def _drop(transport):
    """Close without a byte; under a TLS wrapper, close the TCP connection beneath it."""
    while getattr(transport, "wrappedProtocol", None) is not None:
        transport = transport.transport
    transport.loseConnection()


class _Gate(protocol.Protocol):
    """
    The protocol of a connection until it is admitted, denied or refused.  Once the inner
    protocol takes over, nothing references the gate any more.
    """

    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self.early = b""
        self.counted = False
        self.handedOff = False
        self.recheckedPerIP = False

    def logPrefix(self):
        """The listener's name, which the transport keeps as its log prefix for good."""
        return self.factory.service

    def connectionMade(self):
        self.factory._arrived(self)

    def dataReceived(self, data):
        self.early += data
        if len(self.early) > PREADMISSION_LIMIT:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.connected = 0
        if self.counted and not self.handedOff:
            self.factory._release(None)


def _countedClass(factory, cls):
    """
    C{cls} with a C{connectionLost} that also frees the slot of C{factory}.  The inner
    protocol's instance is moved to it, so the count costs no per-connection memory and no
    wrapper sits in the data path.
    """

    def connectionLost(self, reason):
        try:
            cls.connectionLost(self, reason)
        finally:
            factory._release(getattr(self, "tcpserverPeerIP", None))

    return type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "connectionLost": connectionLost,
        },
    )


class RulesFactory(protocol.ServerFactory):
    """
    The tcpserver layer of one listener.

    @ivar service: the listener's name, the C{log_system} of its log lines.
    @ivar active: connections accepted and not yet closed (tcpserver's N of C{status: N/L}).
    """

    def __init__(
        self,
        wrappedFactory,
        service,
        rules=None,
        maxConnections=DEFAULT_MAX_CONNECTIONS,
        maxPerIP=0,
        resolver=None,
        localHostname=None,
        reactor=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.wrappedFactory = wrappedFactory
        self.service = service
        self.rules = rules
        self.maxConnections = max(1, maxConnections)
        self.maxPerIP = maxPerIP
        self.resolver = resolver
        self.localHostname = localHostname
        self.reactor = reactor
        self.active = 0
        self._perIP = {}
        self._waiting = deque()
        self._port = None
        self._accepting = True
        self._counted = {}
        self._shared = {}

    def setPort(self, port):
        """Give the listening port, so the limit can stop and restart C{accept()}."""
        self._port = port
        self._throttle()

    def startFactory(self):
        self.wrappedFactory.doStart()

    def stopFactory(self):
        self.wrappedFactory.doStop()

    def logPrefix(self):
        return self.service

    def buildProtocol(self, addr):
        return _Gate(self, addr)

    def _emit(self, line, warn=False):
        emit = _log.warn if warn else _log.info
        emit("{qmail}", qmail=line, log_system=self.service)

    def _status(self):
        self._emit(f"tcpserver: status: {self.active}/{self.maxConnections}")

    def _throttle(self):
        """Accept while below the limit, as tcpserver stops calling accept() at it."""
        if self._port is None:
            return
        if self._accepting and self.active >= self.maxConnections:
            self._accepting = False
            self._port.stopReading()
            self._status()
        elif not self._accepting and self.active < self.maxConnections:
            self._accepting = True
            self._port.startReading()
            self._status()

    def _arrived(self, gate):
        """
        A connection was accepted.  Beyond the limit (one accept batch may overshoot it) it
        waits, paused and unanswered, as it would have in the backlog.
        """
        setNoDelay(gate.transport)
        if self.active < self.maxConnections:
            self.active += 1
            gate.counted = True
            self._throttle()
            self._admit(gate)
        else:
            gate.transport.pauseProducing()
            self._waiting.append(gate)

    def _release(self, ip):
        """
        A counted connection closed: free its slot (and its per-IP slot when C{ip} is
        given) and let a waiting one in.
        """
        self.active -= 1
        if ip is not None:
            self._unclaim(ip)
        while self._waiting and self.active < self.maxConnections:
            gate = self._waiting.popleft()
            if gate.connected:
                self.active += 1
                gate.counted = True
                gate.transport.resumeProducing()
                self._admit(gate)
        self._throttle()

    def _share(self, text):
        """One string object per local address/port/name, shared by every connection's env."""
        return self._shared.setdefault(text, text)

    def _admit(self, gate):
        transport = gate.transport
        local, peer = transport.getHost(), transport.getPeer()
        env = {
            "PROTO": "TCP",
            "TCPLOCALIP": self._share(addressText(local.host)),
            "TCPLOCALPORT": self._share(str(local.port)),
            "TCPREMOTEIP": addressText(peer.host),
            "TCPREMOTEPORT": str(peer.port),
        }
        if self.localHostname is not None:
            env["TCPLOCALHOST"] = self.localHostname
        if self.resolver is None:
            self._decideOrDrop(gate, env)
            return
        transport.pauseProducing()
        lookups = [self._pointer(env["TCPREMOTEIP"])]
        if self.localHostname is None:
            lookups.append(self._pointer(env["TCPLOCALIP"]))
        DeferredList(lookups).addCallback(self._cbNames, gate, env)

    def _pointer(self, ip):
        try:
            d = self.resolver.lookupPointer(reverseName(ip))
        except Exception:
            return succeed(None)
        d.addTimeout(PTR_TIMEOUT, self.reactor)
        d.addCallback(_firstPointer)
        d.addErrback(lambda failure: None)
        return d

    def _cbNames(self, results, gate, env):
        names = [value for ok, value in results]
        if names[0] is not None:
            env["TCPREMOTEHOST"] = names[0]
        if len(names) > 1 and names[1] is not None:
            env["TCPLOCALHOST"] = self._share(names[1])
        if not gate.connected:
            return
        gate.transport.resumeProducing()
        self._decideOrDrop(gate, env)

    def _line(self, verb, gate, env):
        return (
            f"tcpserver: {verb} {getattr(gate.transport, 'sessionno', 0)} "
            f"{env.get('TCPLOCALHOST', '')}:{env['TCPLOCALIP']}:{env['TCPLOCALPORT']} "
            f"{env.get('TCPREMOTEHOST', '')}:{env['TCPREMOTEIP']}:"
            f"{env.get('TCPREMOTEINFO', '')}:{env['TCPREMOTEPORT']}"
        )

    def _decideOrDrop(self, gate, env, step=None, *args):
        """
        L{_decide} (or C{step}), dropping the client if it fails before the hand-off (never
        a lost slot).
        """
        try:
            (step or self._decide)(gate, env, *args)
        except Exception:
            _log.failure("tcpserver: dropping connection", log_system=self.service)
            if not gate.handedOff:
                _drop(gate.transport)

    def _decide(self, gate, env):
        """Rules, then the per-IP limit, then the inner protocol (spec/rules.md §1 5-6)."""
        transport = gate.transport
        ip = env["TCPREMOTEIP"]
        line = self._line("ok", gate, env)
        if self.rules is not None:
            try:
                rules = self.rules.current() if hasattr(self.rules, "current") else self.rules
            except RulesError as e:
                self._emit(f"tcpserver: warning: dropping connection, {e}", warn=True)
                _drop(transport)
                return
            if rules is not None:
                match = rules.lookup(ip, env.get("TCPREMOTEHOST"), env.get("TCPREMOTEINFO"))
                if match.deny:
                    self._emit(self._line("deny", gate, env))
                    _drop(transport)
                    return
                env.update(match.env)
        self._enter(gate, env, ip, line)

    def _recheckPerIP(self, gate, env, ip, line):
        if gate.connected:
            self._decideOrDrop(gate, env, self._enter, ip, line)

    def _enter(self, gate, env, ip, line):
        """The per-IP limit, then the inner protocol."""
        transport = gate.transport
        if self.maxPerIP:
            count = self._perIP.get(ip, 0)
            if count >= self.maxPerIP and not gate.recheckedPerIP:
                # A client that reconnects the moment its session ended is often seen
                # before that end is counted (its close is in the same batch of events,
                # or a receiver's report is on its way): look once more, a moment later.
                gate.recheckedPerIP = True
                self.reactor.callLater(PER_IP_RECHECK, self._recheckPerIP, gate, env, ip, line)
                return
            if count >= self.maxPerIP:
                self._emit(self._line("busy", gate, env))
                transport.write(getattr(self.wrappedFactory, "busyReply", b""))
                transport.loseConnection()
                return
            self._perIP[ip] = count + 1
        inner = self.wrappedFactory.buildProtocol(gate.addr)
        if inner is None:
            self._unclaim(ip)
            _drop(transport)
            return
        self._emit(line)
        self._handOff(gate, inner, env, ip)

    def _unclaim(self, ip):
        if ip in self._perIP:
            left = self._perIP[ip] - 1
            if left > 0:
                self._perIP[ip] = left
            else:
                self._perIP.pop(ip, None)

    def _handOff(self, gate, inner, env, ip):
        """Give the connection to C{inner}: from here on the gate is out of the picture."""
        transport = gate.transport
        cls = type(inner)
        counted = self._counted.get(cls)
        if counted is None:
            counted = self._counted[cls] = _countedClass(self, cls)
        inner.__class__ = counted
        inner.env = env
        if self.maxPerIP:
            inner.tcpserverPeerIP = ip
        gate.handedOff = True
        direct = getattr(transport, "protocol", None) is gate
        if direct:
            transport.protocol = inner
        elif getattr(transport, "wrappedProtocol", None) is gate:
            transport.wrappedProtocol = inner
        inner.makeConnection(transport)
        if gate.early and inner.connected:
            # An implicit-TLS session layers TLS under itself as it connects: then the early
            # bytes (its ClientHello) go to that layer, which now receives the connection's.
            # Any other new protocol of the connection is not the session's (a hand-off to a
            # receiver leaves a detached one), so the session gets them.
            layer = transport.protocol if direct else None
            tls = getattr(layer, "wrappedProtocol", None) is inner
            (layer if tls else inner).dataReceived(gate.early)
