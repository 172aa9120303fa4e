"""
Remote delivery against live servers on 127.0.0.0/8 that this project did not write
(aiosmtpd, with STARTTLS and AUTH) and against qmailtx's own SMTP and QMTP listeners, with
DNS answered by a local twisted.names server: MX order, Null MX, A fallback, temporary DNS
failure, self-MX, one transaction for several recipients, connection reuse, TLS policy,
the "Possible duplicate!" deferral, and the smuggling payloads arriving intact.
"""

import glob
import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.names import dns
from twisted.trial import unittest

from qmailtx.control import ControlDir
from qmailtx.remote import RemoteDeliverer
from qmailtx.results import Delivered, PermFailure, TempFailure
from tests.protocol.smtpfakes import ScriptedFactory
from tests.service.daemon import Daemon, freePort
from tests.service.remotepeers import certificates, startAiosmtpd, startDNS

MESSAGE = b"From: a@example.net\nSubject: test\n\nhello\n"

SMUGGLING = [
    b"Subject: cr\n\nbefore\r.\rMAIL FROM:<evil@x>\r\nafter\n",
    b"Subject: lf\n\nbefore\n.\nMAIL FROM:<evil@x>\nafter\n",
    (b"X" * 63 + b"\n") * 256 + b".\nafter a lone dot at byte 16384\n",
    b".\nfirst line was a dot\n",
    (b"Y" * 63 + b"\n") * 1024 + b".\n..\nat the encoder's chunk boundary\n",
]


def canonical(message):
    """What an SMTP receiver must store: every line break of the queued message as LF."""
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class RemoteServiceTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qmailtx-remote-")
        self.control = os.path.join(self.dir, "control")
        os.mkdir(self.control)
        self.writeControl("me", b"me.example\n")
        self.port = freePort("127.0.0.2")
        self.smtp, self.recorder = startAiosmtpd("127.0.0.2", self.port)
        self.addCleanup(self.smtp.stop)
        self.records = {
            "example.org": [(dns.MX, (10, "mx1.example.org")), (dns.MX, (20, "mx2.example.org"))],
            "mx1.example.org": [(dns.A, "127.0.0.3")],
            "mx2.example.org": [(dns.A, "127.0.0.2")],
            "amx.example.org": [(dns.A, "127.0.0.2")],
            "null.example.org": [(dns.MX, (0, ""))],
            "broken.example.org": "servfail",
            "self.example.org": [(dns.MX, (10, "me.example.org")), (dns.MX, (20, "mx2.example.org"))],
            "me.example.org": [(dns.A, "127.0.0.1")],
            "tls.example.org": [(dns.MX, (10, "mx.test"))],
            "mx.test": [(dns.A, "127.0.0.6")],
        }
        self.dnsPort, resolver = startDNS(reactor, self.records)
        self.addCleanup(self.dnsPort.stopListening)
        self.deliverer = RemoteDeliverer(ControlDir(self.control), reactor, resolver,
                                         ipme={b"127.0.0.1"}, smtpPort=self.port)
        self.addCleanup(self.deliverer.stop)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def writeControl(self, name, data):
        path = os.path.join(self.control, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def message(self, data=MESSAGE):
        path = os.path.join(self.dir, "mess%d" % len(os.listdir(self.dir)))
        with open(path, "wb") as f:
            f.write(data)
        return path

    def deliver(self, host, recipients=(b"joe@example.org",), data=MESSAGE, sender=b"a@example.net"):
        return self.deliverer.deliver(host, sender, list(recipients), self.message(data))

    async def test_mxOrderAndFallthrough(self):
        """The best MX refuses connections, so the next preference gets the message."""
        results = await self.deliver(b"example.org", [b"joe@example.org", b"ann@example.org"])
        self.assertEqual(results, [Delivered(
            b"127.0.0.2 accepted message.\nRemote host said: 250 2.0.0 ok stored\n")] * 2)
        self.assertEqual(len(self.recorder.messages), 1, "one transaction for both")
        m = self.recorder.messages[0]
        self.assertEqual((m["from"], m["to"]), ("a@example.net", ["joe@example.org",
                                                                  "ann@example.org"]))

    async def test_aFallback(self):
        """A host without MX records gets mail at its own A record."""
        results = await self.deliver(b"amx.example.org")
        self.assertIsInstance(results[0], Delivered)

    async def test_nullMX(self):
        """A Null MX is a permanent failure without any connection."""
        results = await self.deliver(b"null.example.org")
        self.assertIsInstance(results[0], PermFailure)
        self.assertIn(b"(#5.1.10)", results[0].text)

    async def test_noSuchDomain(self):
        """NXDOMAIN for MX and A: permanent #5.1.2 naming the host."""
        results = await self.deliver(b"nowhere.example.org")
        self.assertEqual(results, [PermFailure(
            b"Sorry, I couldn't find any host named nowhere.example.org. (#5.1.2)\n")])

    async def test_temporaryDNSFailure(self):
        """SERVFAIL is the #4.1.2 deferral."""
        results = await self.deliver(b"broken.example.org")
        self.assertEqual(results, [TempFailure(
            b"Sorry, I couldn't find any host by that name. (#4.1.2)\n")])
        self.flushLoggedErrors(RuntimeError)

    async def test_selfMX(self):
        """An MX at one of this host's addresses: only better preferences are tried (none)."""
        self.records["self.example.org"] = [(dns.MX, (10, "me.example.org"))]
        results = await self.deliver(b"self.example.org")
        self.assertIsInstance(results[0], PermFailure)
        self.assertIn(b"(#5.4.6)", results[0].text)
        self.assertEqual(self.recorder.messages, [])

    async def test_noConnection(self):
        """Every address refuses: the #4.4.1 deferral."""
        self.writeControl("smtproutes", b"example.org:127.0.0.3:%d\n" % self.port)
        results = await self.deliver(b"example.org")
        self.assertEqual(results, [TempFailure(
            b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n")])

    async def test_connectionReused(self):
        """Consecutive deliveries to one destination share one SMTP connection (RSET between)."""
        for i in range(4):
            results = await self.deliver(b"example.org", [b"u%d@example.org" % i])
            self.assertIsInstance(results[0], Delivered)
            await deferLater(0.05)
        self.assertEqual(len({m["peer"] for m in self.recorder.messages}), 1)
        self.assertEqual(len(self.recorder.messages), 4)

    async def test_recipientReports(self):
        """
        A refused recipient fails alone: 5xx permanent, 4xx temporary, the rest delivered;
        its text is qmail's for that recipient alone, 'Giving up' included (spec/remote.md §5).
        """
        results = await self.deliver(b"example.org", [b"ok@example.org", b"bad@example.org",
                                                      b"later@example.org"])
        self.assertIsInstance(results[0], Delivered)
        self.assertEqual(results[1], PermFailure(
            b"127.0.0.2 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n"
            b"Giving up on 127.0.0.2.\n"))
        self.assertEqual(results[2], TempFailure(
            b"127.0.0.2 does not like recipient.\nRemote host said: 450 4.2.0 try later\n"
            b"Giving up on 127.0.0.2.\n"))
        self.assertEqual(self.recorder.messages[0]["to"], ["ok@example.org"])

    async def test_smugglingPayloadsArriveIntact(self):
        """
        Bare CR-dot-CR, LF-dot-LF, a lone dot at byte 16384 and at the encoder's chunk
        boundary, and a first line '.' all arrive as one message with the queued content.
        """
        for data in SMUGGLING:
            results = await self.deliver(b"example.org", data=data)
            self.assertIsInstance(results[0], Delivered)
        got = [canonical(m["data"]) for m in self.recorder.messages]
        self.assertEqual(got, [canonical(m) for m in SMUGGLING])
        self.assertEqual(got[1:], SMUGGLING[1:], "LF-only messages arrive byte-identical")

    async def test_startTLSOpportunistic(self):
        """A server offering STARTTLS gets TLS without any certificate checking."""
        certs = certificates()
        port = freePort("127.0.0.6")
        server, recorder = startAiosmtpd("127.0.0.6", port, tls=(certs["cert"], certs["key"]))
        self.addCleanup(server.stop)
        self.writeControl("smtproutes", b"tls.example.org:127.0.0.6:%d\n" % port)
        results = await self.deliver(b"tls.example.org")
        self.assertIsInstance(results[0], Delivered)
        self.assertTrue(recorder.messages[0]["tls"])

    async def test_tlsDestinationVerified(self):
        """tlsdestinations: the MX's certificate must verify against the given CA and name."""
        certs = certificates()
        server, recorder = startAiosmtpd("127.0.0.6", self.port, tls=(certs["cert"], certs["key"]))
        self.addCleanup(server.stop)
        self.writeControl("tlsdestinations", b"tls.example.org:" + certs["ca"].encode() + b"\n")
        results = await self.deliver(b"tls.example.org")
        self.assertIsInstance(results[0], Delivered)
        self.assertTrue(recorder.messages[0]["tls"])

    async def test_tlsDestinationVerificationFails(self):
        """A certificate from another CA is a clear deferral, and nothing is sent."""
        certs = certificates()
        server, recorder = startAiosmtpd("127.0.0.6", self.port, tls=(certs["cert"], certs["key"]))
        self.addCleanup(server.stop)
        self.writeControl("tlsdestinations", b"tls.example.org:" + certs["otherca"].encode() + b"\n")
        results = await self.deliver(b"tls.example.org")
        self.assertIsInstance(results[0], TempFailure)
        self.assertTrue(results[0].text.startswith(
            b"Connected to 127.0.0.6 but TLS negotiation failed: "), results[0].text)
        self.assertEqual(recorder.messages, [])

    async def test_tlsRequiredButNotOffered(self):
        """A must-TLS destination whose server has no STARTTLS is deferred."""
        self.writeControl("tlsdestinations", b"example.org\n")
        results = await self.deliver(b"example.org")
        self.assertIsInstance(results[0], TempFailure)
        self.assertIn(b"does not offer STARTTLS", results[0].text)
        self.assertEqual(self.recorder.messages, [])

    async def test_cachedPlainConnectionNotReusedWhereTLSRequired(self):
        """
        Two domains share one smtproutes relay; tlsdestinations requires TLS for one.  The
        idle plaintext connection left by the other domain's delivery is not reused for it:
        the new connection finds no STARTTLS, so the mail is deferred, not sent in clear.
        """
        self.writeControl("smtproutes", b":127.0.0.2:%d\n" % self.port)
        self.writeControl("tlsdestinations", b"secure.example:\n")
        results = await self.deliver(b"plain.example", [b"a@plain.example"])
        self.assertIsInstance(results[0], Delivered)
        results = await self.deliver(b"secure.example", [b"b@secure.example"])
        self.assertIsInstance(results[0], TempFailure)
        self.assertIn(b"does not offer STARTTLS", results[0].text)
        self.assertEqual([m["to"] for m in self.recorder.messages], [["a@plain.example"]])

    async def test_verifiedConnectionReused(self):
        """A connection that passed a destination's TLS verification serves its next message."""
        certs = certificates()
        server, recorder = startAiosmtpd("127.0.0.6", self.port, tls=(certs["cert"], certs["key"]))
        self.addCleanup(server.stop)
        self.writeControl("tlsdestinations", b"tls.example.org:" + certs["ca"].encode() + b"\n")
        for i in range(2):
            results = await self.deliver(b"tls.example.org", [b"u%d@tls.example.org" % i])
            self.assertIsInstance(results[0], Delivered)
            await deferLater(0.05)
        self.assertEqual(len({m["peer"] for m in recorder.messages}), 1)
        self.assertTrue(all(m["tls"] for m in recorder.messages))

    async def test_cachedConnectionKeepsItsCredentials(self):
        """
        Routes to one relay with and without AUTH credentials: each message goes over a
        session authenticated exactly as its own route says, never one left by the other.
        """
        certs = certificates()
        port = freePort("127.0.0.7")
        server, recorder = startAiosmtpd("127.0.0.7", port, tls=(certs["cert"], certs["key"]),
                                         auth=(b"user", b"secret"))
        self.addCleanup(server.stop)
        self.writeControl("smtproutes", b"auth.example:127.0.0.7:%d|user|secret\n"
                          b":127.0.0.7:%d\n" % (port, port))
        for host in (b"plain.example", b"auth.example", b"plain.example", b"auth.example"):
            results = await self.deliver(host, [b"joe@" + host])
            self.assertIsInstance(results[0], Delivered, results)
            await deferLater(0.05)
        self.assertEqual([(m["to"][0], bool(m["auth"])) for m in recorder.messages],
                         [("joe@plain.example", False), ("joe@auth.example", True),
                          ("joe@plain.example", False), ("joe@auth.example", True)])

    async def test_authToSmarthostOverTLS(self):
        """A route with user and password authenticates after STARTTLS."""
        certs = certificates()
        port = freePort("127.0.0.7")
        server, recorder = startAiosmtpd("127.0.0.7", port, tls=(certs["cert"], certs["key"]),
                                         auth=(b"user", b"secret"))
        self.addCleanup(server.stop)
        self.writeControl("smtproutes", b":127.0.0.7:%d|user|secret\n" % port)
        results = await self.deliver(b"anywhere.example")
        self.assertIsInstance(results[0], Delivered)
        self.assertTrue(recorder.messages[0]["auth"] and recorder.messages[0]["tls"])

    async def test_droppedAfterDotIsPossibleDuplicate(self):
        """A server that hangs up after the final dot yields the 'Possible duplicate!' deferral."""
        port = reactor.listenTCP(0, ScriptedFactory({"dot": None}), interface="127.0.0.5")
        self.addCleanup(port.stopListening)
        self.writeControl("smtproutes", b":127.0.0.5:%d\n" % port.getHost().port)
        results = await self.deliver(b"example.org")
        self.assertEqual(results, [TempFailure(
            b"Connected to 127.0.0.5 but connection died. Possible duplicate! (#4.4.2)\n")])

    async def test_partialFinalLine(self):
        """A message without a final LF is refused before any connection (#5.6.2)."""
        results = await self.deliver(b"example.org", data=b"no final newline")
        self.assertEqual(results, [PermFailure(
            b"SMTP cannot transfer messages with partial final lines. (#5.6.2)\n")])
        self.assertEqual(self.recorder.messages, [])


def deferLater(seconds):
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


class OwnListenerTests(unittest.TestCase):
    """Delivery into qmailtx's own SMTP and QMTP listeners (a live twistd qmail)."""

    def setUp(self):
        from qmailtx.rootdir import createRoot

        self.dir = tempfile.mkdtemp(prefix="qmailtx-remote-own-")
        self.root = os.path.join(self.dir, "root")
        createRoot(self.root, "peer.example")
        self.daemon = Daemon(self.root, listeners=("smtp", "qmtp"), host="127.0.0.4").start()
        self.addCleanup(self.daemon.stop)
        self.control = os.path.join(self.dir, "control")
        os.mkdir(self.control)
        with open(os.path.join(self.control, "me"), "wb") as f:
            f.write(b"me.example\n")
        records = {"q.example.org": [(dns.MX, (12801, "qmtp.example.org"))],
                   "qmtp.example.org": [(dns.A, "127.0.0.4")]}
        self.dnsPort, resolver = startDNS(reactor, records)
        self.addCleanup(self.dnsPort.stopListening)
        self.deliverer = RemoteDeliverer(ControlDir(self.control), reactor, resolver,
                                         ipme={b"127.0.0.1"}, qmtpPort=self.daemon.ports["qmtp"])
        self.addCleanup(self.deliverer.stop)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def queued(self):
        out = []
        for path in sorted(glob.glob(os.path.join(self.root, "queue", "mess", "*", "*")),
                           key=os.path.getmtime):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    async def send(self, host, data):
        path = os.path.join(self.dir, "m")
        with open(path, "wb") as f:
            f.write(data)
        return await self.deliverer.deliver(host, b"a@example.net", [b"joe@peer.example"], path)

    async def test_smtpIntoOwnListener(self):
        """Our client and our server agree: every smuggling payload queued as one message."""
        with open(os.path.join(self.control, "smtproutes"), "wb") as f:
            f.write(b":127.0.0.4:%d\n" % self.daemon.port)
        for data in SMUGGLING:
            results = await self.send(b"example.org", data)
            self.assertIsInstance(results[0], Delivered, repr(results))
            self.assertIn(b" accepted message.\nRemote host said: 250 ok ", results[0].text)
        queued = self.queued()
        self.assertEqual(len(queued), len(SMUGGLING), [q[:200] for q in queued])
        for data in SMUGGLING:
            self.assertEqual(len([q for q in queued if q.endswith(canonical(data))]), 1)

    async def test_qmtpRoute(self):
        """qmtproutes sends by QMTP, and the message is queued byte for byte, CRs and all."""
        with open(os.path.join(self.control, "qmtproutes"), "wb") as f:
            f.write(b":127.0.0.4:%d\n" % self.daemon.ports["qmtp"])
        data = SMUGGLING[0]
        results = await self.send(b"example.org", data)
        self.assertIsInstance(results[0], Delivered, repr(results))
        self.assertTrue(results[0].text.startswith(b"ok "), results)
        self.assertTrue(self.queued()[0].endswith(data))

    async def test_mxpsChoosesQMTP(self):
        """An MX preference announcing QMTP (MXPS 12801) is delivered by QMTP."""
        results = await self.send(b"q.example.org", MESSAGE)
        self.assertIsInstance(results[0], Delivered, repr(results))
        self.assertTrue(results[0].text.startswith(b"ok "), results)
        self.assertIn(b"with QMTP", self.queued()[0])


class IPv6Tests(unittest.TestCase):
    """AAAA records are tried as well as A records."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qmailtx-remote-v6-")
        control = os.path.join(self.dir, "control")
        os.mkdir(control)
        with open(os.path.join(control, "me"), "wb") as f:
            f.write(b"me.example\n")
        import socket
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        self.smtp, self.recorder = startAiosmtpd("::1", port)
        self.addCleanup(self.smtp.stop)
        records = {"v6.example.org": [(dns.MX, (10, "mx6.example.org"))],
                   "mx6.example.org": [(dns.AAAA, "::1")]}
        self.dnsPort, resolver = startDNS(reactor, records)
        self.addCleanup(self.dnsPort.stopListening)
        self.deliverer = RemoteDeliverer(ControlDir(control), reactor, resolver,
                                         ipme={b"127.0.0.1"}, smtpPort=port)
        self.addCleanup(self.deliverer.stop)
        self.addCleanup(shutil.rmtree, self.dir, True)

    async def test_aaaaOnly(self):
        """An MX with only an AAAA record is reached over IPv6; the report names ::1."""
        path = os.path.join(self.dir, "m")
        with open(path, "wb") as f:
            f.write(MESSAGE)
        results = await self.deliverer.deliver(b"v6.example.org", b"a@example.net",
                                               [b"joe@v6.example.org"], path)
        self.assertEqual(results[0], Delivered(
            b"::1 accepted message.\nRemote host said: 250 2.0.0 ok stored\n"))
