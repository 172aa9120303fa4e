"""
Live peers for remote delivery tests: an aiosmtpd server on a 127.0.0.x address (with
STARTTLS and AUTH when asked), a twisted.names DNS server answering from a table, and a
test CA with a server certificate for C{mx.test}.
"""

import os
import ssl
import subprocess
import tempfile

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet import defer
from twisted.names import client, common, dns, server
from twisted.names.error import DomainError

from tests.service.daemon import freePort


class Recorder:
    """aiosmtpd handler keeping each message with its session's peer and TLS state."""

    def __init__(self):
        self.messages = []

    async def handle_RCPT(self, srv, session, envelope, address, options):
        """C{bad*} addresses are refused for good, C{later*} for now."""
        if address.startswith("bad"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "450 4.2.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, srv, session, envelope):
        self.messages.append({
            "peer": session.peer, "tls": session.ssl is not None,
            "auth": session.authenticated, "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos), "data": envelope.original_content})
        return "250 2.0.0 ok stored"


def startAiosmtpd(host, port=None, tls=None, auth=None):
    """
    aiosmtpd on C{host}:C{port}; C{tls} a (cert, key) pair enables STARTTLS; C{auth} a
    (user, password) pair enables AUTH (after TLS only).  Returns (controller, recorder).
    """
    recorder = Recorder()
    kw = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        kw["tls_context"] = context
    if auth is not None:
        def authenticator(srv, session, envelope, mechanism, data):
            return AuthResult(success=(data.login, data.password) == auth)
        kw["authenticator"] = authenticator
        kw["auth_require_tls"] = True
    controller = Controller(recorder, hostname=host, port=port or freePort(host),
                            data_size_limit=None, **kw)
    controller.start()
    return controller, recorder


class TableAuthority(common.ResolverBase):
    """
    Answers MX, A and AAAA from C{records} (name => list of (type, value)); a name
    mapped to C{"servfail"} fails every query; names not present are NXDOMAIN.
    """

    def __init__(self, records):
        common.ResolverBase.__init__(self)
        self.records = records

    def _lookup(self, name, cls, qtype, timeout):
        key = name.decode("ascii") if isinstance(name, bytes) else name
        entries = self.records.get(key.lower())
        if entries is None:
            return defer.fail(DomainError(name))
        if entries == "servfail":
            return defer.fail(RuntimeError("servfail"))
        answers = []
        for rtype, value in entries:
            if rtype != qtype:
                continue
            if rtype == dns.MX:
                payload = dns.Record_MX(value[0], value[1])
            elif rtype == dns.A:
                payload = dns.Record_A(value)
            else:
                payload = dns.Record_AAAA(value)
            answers.append(dns.RRHeader(name, rtype, payload=payload, auth=True))
        return defer.succeed((answers, [], []))


def startDNS(reactor, records):
    """A DNS server on 127.0.0.1 (UDP, port 0); returns (port, resolver speaking to it)."""
    factory = server.DNSServerFactory(authorities=[TableAuthority(records)])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor)
    return port, resolver


_CERTS = {}


def certificates():
    """C{{"ca", "cert", "key", "otherca"}} paths: a CA, a cert for mx.test, another CA."""
    if _CERTS:
        return _CERTS
    d = tempfile.mkdtemp(prefix="qmailtx-remote-certs-")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    for ca in ("ca", "otherca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN=qmailtx test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx.test", "-keyout",
        "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:mx.test\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "server.pem")
    _CERTS.update(ca=os.path.join(d, "ca.pem"), otherca=os.path.join(d, "otherca.pem"),
                  cert=os.path.join(d, "server.pem"), key=os.path.join(d, "server.key"))
    return _CERTS
