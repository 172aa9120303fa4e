"""
The remote channel: qmail-remote's semantics for the queue manager (spec/remote.md).

L{RemoteDeliverer} takes one message and the recipients of one host, finds where to send
it (C{qmtproutes}, C{smtproutes} and the address rules of L{qmailtx.remoteroute}, MX with
A/AAAA fallback through L{qmailtx.resolver}, MXPS, the self-MX rule, the connect-timeout
table), speaks SMTP (L{qmailtx.smtpclient}, L{qmailtx.smtpdialogue}) or QMTP
(L{qmailtx.qmtpclient}) and returns one results value per recipient with qmail-remote's
texts, combined as qmail-rspawn combines them.  Open SMTP connections are kept a few
seconds per destination and reused (L{qmailtx.remotecache}).

Reads C{control/} and the queue file; writes nothing on disk (the timeout table is kept in
memory, spec/remote.md §6 allows it).  Must not import the queue, send or the servers.
"""

import os
import random

from twisted.internet import defer, endpoints, error
from twisted.internet.protocol import Factory
from twisted.names import dns
from twisted.names.error import DNSNameError

from qmailtx import log, qmtpclient, smtpclient, smtpdialogue
from qmailtx.bounce import quoteLocal
from qmailtx.control import ControlError
from qmailtx.encoder import PARTIAL_LINE, partialFinalLine
from qmailtx.ipme import ipme as localAddresses
from qmailtx.remotecache import ConnectionCache
from qmailtx.remoteroute import (
    Candidate, TimeoutTable, keyTable, literalAddress, lookupKey, mxpsQMTP, orderExchangers,
    parseRoute, tlsPolicy)
from qmailtx.resolver import RESOLV_CONF_VARIABLE, systemResolver
from qmailtx.results import Delivered, PermFailure, TempFailure

SMTP_PORT = 25
QMTP_PORT = 209

CONTROL_TEXT = b"ZUnable to read control files. (#4.3.0)\n"
READ_TEXT = b"ZUnable to read message. (#4.3.0)\n"
TEMP_DNS = b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n"
NO_MX = b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n"
NO_CONNECTION = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
AMBIGUOUS_MX = (b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n")
UNKNOWN_TROUBLE = b"Zqmail-remote crashed.\n"

CONTROL_RECHECK = 1.0
"""Seconds the control settings serve deliveries before the files are looked at again:
qmail-remote reads them once per run, and a stat per file per message was a fifth of the
channel's CPU at a few thousand messages a second."""


def permDNS(host):
    safe = bytes(b if 32 < b < 127 else 63 for b in host)
    return b"DSorry, I couldn't find any host named " + safe + b". (#5.1.2)\n"


def nullMX(host):
    safe = bytes(b if 32 < b < 127 else 63 for b in host)
    return b"DSorry, " + safe + b" does not accept mail (null MX). (#5.1.10)\n"


def mangle(address):
    """qmail-remote's addrmangle(): quote the local part when there is an C{@}."""
    at = address.rfind(b"@")
    if at == -1:
        return address
    return quoteLocal(address[:at]) + address[at:]


_ORDER = {b"K": 1, b"Z": 0, b"D": -1}


def combine(recipientReport, messageReport):
    """
    One recipient's results value from qmail-remote's reports, as qmail-rspawn decides
    (spec/remote.md §5): C{h} is permanent, C{s} temporary, C{r} takes the message's
    letter; the message text follows when the message letter is at least as bad.
    """
    result = _ORDER.get(messageReport[:1], -1)
    if recipientReport is None:
        chosen, text = result, messageReport[1:]
    else:
        chosen = {b"s": 0, b"h": -1}.get(recipientReport[:1], result)
        text = recipientReport[1:]
        if result <= chosen:
            text += messageReport[1:]
    if chosen == 1:
        return Delivered(text)
    if chosen == 0:
        return TempFailure(text)
    return PermFailure(text)


_REFUSED = b" does not like recipient.\n"


def reportAlone(recipientReport, messageReport):
    """
    The message report qmail-remote would have given for this recipient run alone, as
    qmail-send runs it (qmailtx batches a host's recipients): an SMTP refusal of its RCPT
    ends that run with C{Giving up on IP.} whatever the other recipients got.  Anything
    else, QMTP refusals included (their text names no IP), keeps the message report.
    """
    if recipientReport is None or recipientReport[:1] not in (b"h", b"s"):
        return messageReport
    ip, refused, _ = recipientReport[1:].partition(_REFUSED)
    if not refused or literalAddress(ip) is None:
        return messageReport
    return b"DGiving up on " + ip + b".\n"


class RemoteDeliverer:
    """
    Delivers to remote hosts as qmail-remote does; one instance serves the daemon.

    @param controls: a L{qmailtx.control.ControlDir}, looked at again at most every
        L{CONTROL_RECHECK} seconds.
    @param resolver: a twisted.names resolver (default: the system's).
    @param ipme: this host's addresses for the self-MX rule (default: the interfaces').
    @param smtpPort: port for MX and literal-IP deliveries (25; tests use another).
    @param qmtpPort: port for QMTP deliveries chosen by MXPS (209).
    """

    def __init__(self, controls, reactor, resolver=None, ipme=None, smtpPort=SMTP_PORT,
                 qmtpPort=QMTP_PORT, rng=None):
        self.controls = controls
        self.reactor = reactor
        if resolver is None:
            resolver = systemResolver(reactor, os.environ.get(RESOLV_CONF_VARIABLE))
        self.resolver = resolver
        self.ipme = localAddresses({b"::1", b"::"}) if ipme is None else frozenset(ipme)
        self.smtpPort = smtpPort
        self.qmtpPort = qmtpPort
        self.rng = rng or random.Random()
        self.timeouts = TimeoutTable(reactor, os.getpid())
        self.cache = ConnectionCache(reactor)
        self._controlSnapshot = None
        self._controlsAt = 0.0

    def deliver(self, host, sender, recipients, messPath):
        """
        Deliver one message to C{recipients} at C{host}, in one transaction.  Fires with
        one L{Delivered}/L{TempFailure}/L{PermFailure} per recipient, in order; never fails.
        """
        d = self.attempt(host, sender, recipients, messPath)

        def combined(attempt):
            return [combine(r, reportAlone(r, attempt.message)) for r in attempt.recipients]

        def trouble(reason):
            log.warning("remote delivery to %s failed unexpectedly: %s"
                        % (log.logsafe(host), reason.getErrorMessage()))
            return [TempFailure(UNKNOWN_TROUBLE[1:])] * len(recipients)

        return d.addCallback(combined).addErrback(trouble)

    @defer.inlineCallbacks
    def attempt(self, host, sender, recipients, messPath):
        """
        qmail-remote's run: an L{smtpdialogue.Attempt} with its recipient reports and its
        message report (what C{qmailtx remote} prints).
        """
        blank = smtpdialogue.Attempt([None] * len(recipients))
        try:
            settings = self._settings(host)
        except ControlError:
            blank.message = CONTROL_TEXT
            return blank
        try:
            messageFile = open(messPath, "rb")
        except OSError:
            blank.message = READ_TEXT
            return blank
        with messageFile:
            try:
                partial, size = partialFinalLine(messageFile)
            except OSError:
                blank.message = READ_TEXT
                return blank
            if partial:
                blank.message = PARTIAL_LINE
                return blank
            sender = mangle(sender)
            recipients = [mangle(r) for r in recipients]
            message = (messPath, messageFile, size)
            try:
                result = yield self._send(host, settings, sender, recipients, message)
            except smtpdialogue.Failed as e:
                blank.message = e.report
                return blank
            return result

    def _controls(self):
        """The host-independent settings, re-read after L{CONTROL_RECHECK} seconds."""
        now = self.reactor.seconds()
        if self._controlSnapshot is not None and 0 <= now - self._controlsAt < CONTROL_RECHECK:
            return self._controlSnapshot
        c = self.controls
        helohost = c.line("helohost")
        if helohost is None:
            helohost = c.me()
        if helohost is None:
            raise ControlError("neither helohost nor me")
        self._controlSnapshot = {
            "helohost": helohost,
            "timeout": max(c.int("timeoutremote", 1200), 1),
            "connectTimeout": max(c.int("timeoutconnect", 60), 1),
            "qmtproutes": keyTable(c.list("qmtproutes", [])),
            "smtproutes": keyTable(c.list("smtproutes", [])),
            "mxps": c.int("mxps", 1) != 0,
        }
        self._controlsAt = now
        return self._controlSnapshot

    def _settings(self, host):
        settings = dict(self._controls())
        for kind, port in (("qmtp", QMTP_PORT), ("smtp", SMTP_PORT)):
            value = lookupKey(settings[kind + "routes"], host)
            settings[kind + "Route"] = None if value is None else parseRoute(value, port)
        return settings

    @defer.inlineCallbacks
    def _send(self, host, settings, sender, recipients, message):
        route = settings["qmtpRoute"] or settings["smtpRoute"]
        qmtpRoute = settings["qmtpRoute"] is not None
        key = (host.lower(),) if route is None else (route.relay.lower(), route.port, qmtpRoute)
        credentials = route.credentials if route is not None else None
        if not qmtpRoute:
            client = self.cache.take(
                key, lambda client: self._suits(client, host, credentials))
            if client is not None:
                attempt = yield self._transaction(client, key, sender, recipients, message)
                if not _diedBeforeReply(attempt, client):
                    return attempt
        candidates = yield self._candidates(host, route, qmtpRoute, settings["mxps"])
        for candidate in candidates:
            if self.timeouts.isBad(candidate.address):
                continue
            qmtp = candidate.qmtp
            factory = _OneShot(qmtpclient.QMTPClient if qmtp else smtpclient.SMTPClient,
                               settings["timeout"], self.reactor)
            endpoint = _endpoint(self.reactor, candidate.address, candidate.port,
                                 settings["connectTimeout"])
            try:
                client = yield endpoint.connect(factory)
            except error.TimeoutError:
                self.timeouts.failed(candidate.address, timedOut=True)
                continue
            except Exception:
                self.timeouts.failed(candidate.address, timedOut=False)
                continue
            self.timeouts.failed(candidate.address, timedOut=False)
            if qmtp:
                attempt = yield qmtpclient.deliver(client, sender, recipients, message[0])
                return attempt
            client.born = self.reactor.seconds()
            policy = tlsPolicy(self.controls, host, candidate.name)
            yield smtpdialogue.openSession(client, settings["helohost"], policy, credentials)
            client.serverName = candidate.name
            client.verifiedBy = _verification(policy)
            client.credentials = credentials
            attempt = yield self._transaction(client, key, sender, recipients, message)
            return attempt
        raise smtpdialogue.Failed(NO_CONNECTION)

    def _suits(self, client, host, credentials):
        """
        Whether an idle session may carry mail for C{host}: it was authenticated with this
        route's credentials (or neither used any), and when the TLS policy for C{host} at
        that server requires TLS, the session passed that very verification.  The cache
        key names only the server, and the policy depends on the recipient's domain.
        """
        if client.credentials != credentials:
            return False
        policy = tlsPolicy(self.controls, host, client.serverName)
        return _verification(policy) in (None, client.verifiedBy)

    @defer.inlineCallbacks
    def _transaction(self, client, key, sender, recipients, message):
        _, messageFile, size = message
        try:
            messageFile.seek(0)
        except OSError:
            client.quit()
            return smtpdialogue.Attempt([None] * len(recipients), READ_TEXT)
        attempt = yield smtpdialogue.transaction(client, sender, recipients, messageFile, size)
        if client.reusable and client.connected:
            self.cache.give(key, client)
        else:
            client.quit()
        return attempt

    @defer.inlineCallbacks
    def _candidates(self, host, route, qmtpRoute, mxps):
        """The addresses to try, in order, after the self-MX rule (spec/remote.md §3)."""
        if route is not None:
            addresses = yield self._hostAddresses(route.relay)
            return [Candidate(0, a, route.port, route.relay, qmtpRoute) for a in addresses]
        literal = literalAddress(host)
        if literal is not None:
            found = [Candidate(0, literal, self.smtpPort, host, False)]
        else:
            found = yield self._exchangers(host, mxps)
        if not found:
            raise smtpdialogue.Failed(NO_MX)
        best = min([c.preference for c in found if c.address in self.ipme], default=None)
        usable = [c for c in found if best is None or c.preference < best]
        if not usable:
            raise smtpdialogue.Failed(AMBIGUOUS_MX)
        return usable

    @defer.inlineCallbacks
    def _exchangers(self, host, mxps):
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(host.decode("ascii"))
        except DNSNameError:
            answers = []
        except Exception:
            raise smtpdialogue.Failed(TEMP_DNS)
        exchangers = [(a.payload.preference, a.payload.name.name) for a in answers
                      if a.type == dns.MX]
        if not exchangers:
            addresses = yield self._hostAddresses(host)
            return [Candidate(0, a, self.smtpPort, host, False) for a in addresses]
        if all(name in (b"", b".") for _, name in exchangers):
            raise smtpdialogue.Failed(nullMX(host))
        ordered = orderExchangers(exchangers, self.rng)
        lookups = yield defer.DeferredList(
            [self._lookupBoth(name) for _, name in ordered], consumeErrors=True)
        found, soft = [], False
        for (preference, name), (_, (addresses, temporary, _)) in zip(ordered, lookups):
            soft = soft or temporary
            qmtp = mxps and mxpsQMTP(preference)
            port = self.qmtpPort if qmtp else self.smtpPort
            found += [Candidate(preference, a, port, name, qmtp) for a in addresses]
        if not found and soft:
            raise smtpdialogue.Failed(TEMP_DNS)
        return found

    @defer.inlineCallbacks
    def _hostAddresses(self, name):
        literal = literalAddress(name)
        if literal is not None:
            return [literal]
        addresses, temporary, missing = yield self._lookupBoth(name)
        if addresses:
            return addresses
        if missing:
            raise smtpdialogue.Failed(permDNS(name))
        if temporary:
            raise smtpdialogue.Failed(TEMP_DNS)
        raise smtpdialogue.Failed(NO_MX)

    @defer.inlineCallbacks
    def _lookupBoth(self, name):
        """
        C{(addresses, temporary, nxdomain)} for C{name}: its A addresses then its AAAA
        addresses, whether a lookup failed temporarily, whether the name does not exist.
        """
        text = name.decode("ascii", "replace")
        results = yield defer.DeferredList(
            [self.resolver.lookupAddress(text), self.resolver.lookupIPV6Address(text)],
            consumeErrors=True)
        addresses, temporary, missing = [], False, False
        for ok, value in results:
            if not ok:
                if value.check(DNSNameError):
                    missing = True
                else:
                    temporary = True
                continue
            for record in value[0]:
                if record.type == dns.A:
                    addresses.append(record.payload.dottedQuad().encode("ascii"))
                elif record.type == dns.AAAA:
                    addresses.append(_ipv6(record.payload.address))
        return addresses, temporary, missing

    def stop(self):
        """Close the idle connections (the service's stopService)."""
        self.cache.closeAll()


def _ipv6(packed):
    import socket
    return socket.inet_ntop(socket.AF_INET6, packed).encode("ascii")


def _verification(policy):
    """
    What a session must have passed to satisfy C{policy}: C{None} when TLS is not required,
    else its verifying options, one object per name, CA file and client certificate as they
    are now (L{qmailtx.remoteroute} caches them), so identity means the same check.
    """
    if policy is None or not policy.required:
        return None
    return policy.contextFactory


def _diedBeforeReply(attempt, client):
    """
    A reused connection that the server closed while it sat idle: nothing was accepted,
    so the message goes over a fresh connection instead of being deferred.
    """
    return (all(r is None for r in attempt.recipients)
            and attempt.message == smtpdialogue.diedReport(client.peerAddress()))


def _endpoint(reactor, address, port, timeout):
    host = address.decode("ascii")
    if ":" in host:
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class _OneShot(Factory):
    """
    Builds the one client protocol of one connection attempt.  Not C{noisy}: a factory per
    delivery would log 'Starting factory'/'Stopping factory' around every message, among
    the qmail lines the log is for.
    """

    noisy = False

    def __init__(self, protocolClass, timeout, clock):
        self.protocolClass = protocolClass
        self.timeout = timeout
        self.clock = clock

    def buildProtocol(self, addr):
        p = self.protocolClass(self.timeout, self.clock)
        p.factory = self
        return p
