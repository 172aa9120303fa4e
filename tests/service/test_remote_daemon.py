"""
Remote delivery through the whole daemon (issue 4): SMTP into a live C{twistd qmail}, the
queue manager's remote lane, and out to receivers this project did not write (aiosmtpd) or
to another qmailtx by QMTP, with every name answered by a local twisted.names server that
the daemon finds through C{QMAILTX_RESOLV_CONF}.

resolv.conf has no port, so the DNS server listens on port 53 of a loopback address, and
MX deliveries go to port 25: both need root (CI runs as root).  IPv6 is not here: the
daemon counts ::1 as itself (the self-MX rule), so AAAA delivery is shown in
test_remote_service.py with an explicit ipme.
"""

import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

import pytest

from qmailtx.rootdir import createRoot
from tests.service.daemon import REPO, Daemon, waitForPort
from tests.service.remotepeers import certificates, startAiosmtpd

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="DNS on port 53 and MX delivery to port 25 need root")

DNS_HOST = "127.53.0.1"
ME = "relay.example"
WAIT = 30.0

RECORDS = {
    "example.org": [["MX", 10, "mx1.example.org"], ["MX", 20, "mx2.example.org"]],
    "mx1.example.org": [["A", "127.0.0.3"]],
    "mx2.example.org": [["A", "127.0.0.2"]],
    "example.net": [["MX", 10, "mx2.example.org"]],
    "null.example.org": [["MX", 0, ""]],
    "tls.example.org": [["MX", 10, "mx.test"]],
    "mx.test": [["A", "127.0.0.6"]],
    "q.example.org": [["MX", 12801, "qmtp.example.org"]],
    "qmtp.example.org": [["A", "127.0.0.4"]],
}

DNS_SERVER = """
import json, sys
from twisted.internet import reactor
from twisted.names import dns, server
from tests.service.remotepeers import TableAuthority
types = {"MX": dns.MX, "A": dns.A}
records = {name: [(types[r[0]], tuple(r[1:]) if r[0] == "MX" else r[1]) for r in rows]
           for name, rows in json.loads(sys.argv[2]).items()}
factory = server.DNSServerFactory(authorities=[TableAuthority(records)])
reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface=sys.argv[1])
print("ready", flush=True)
reactor.run()
"""


@pytest.fixture(scope="module")
def dnsServer(tmp_path_factory):
    """The table above on DNS_HOST:53 (UDP), and a resolv.conf naming it."""
    directory = tmp_path_factory.mktemp("dns")
    process = subprocess.Popen([sys.executable, "-c", DNS_SERVER, DNS_HOST, json.dumps(RECORDS)],
                               stdout=subprocess.PIPE, cwd=REPO,
                               env=dict(os.environ, PYTHONPATH=REPO))
    assert process.stdout.readline() == b"ready\n"
    resolvConf = directory / "resolv.conf"
    resolvConf.write_text(f"nameserver {DNS_HOST}\n")
    yield str(resolvConf)
    process.terminate()
    process.wait()


@pytest.fixture
def receivers():
    """aiosmtpd with STARTTLS on the MX ports the daemon will use."""
    certs = certificates()
    started = {}
    for host in ("127.0.0.2", "127.0.0.6"):
        started[host] = startAiosmtpd(host, 25, tls=(certs["cert"], certs["key"]))
    yield {host: recorder for host, (_, recorder) in started.items()}
    for controller, _ in started.values():
        controller.stop()


@pytest.fixture
def relay(dnsServer):
    """A fresh qmailtx root and its daemon (started by the test after its control edits)."""
    base = tempfile.mkdtemp(prefix="qmailtx-remote-daemon-")
    os.chmod(base, 0o755)
    root = os.path.join(base, "root")
    createRoot(root, ME)
    env = dict(os.environ, QMAILTX_RESOLV_CONF=dnsServer)
    daemon = Daemon(root, env=env)
    yield daemon
    daemon.stop()
    shutil.rmtree(base, ignore_errors=True)


def control(daemon, name, data):
    with open(os.path.join(daemon.root, "control", name), "wb") as f:
        f.write(data)


def send(daemon, sender, recipients, body=b"Subject: remote\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        refused = s.sendmail(sender, recipients, body)
    assert refused == {}


def waitFor(daemon, predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; daemon log:\n{daemon.log()[-4000:]}")
        time.sleep(0.05)


def test_severalRecipientsOneTransaction(relay, receivers):
    """
    One message for three recipients of example.org: the best MX refuses connections, the
    next takes one STARTTLS transaction with both good recipients; the refused one fails
    for good and its bounce reaches the sender's own MX (example.net) by remote delivery.
    """
    relay.start()
    send(relay, "a@example.net", ["joe@example.org", "bad@example.org", "ann@example.org"])
    recorder = receivers["127.0.0.2"]
    waitFor(relay, lambda: len(recorder.messages) >= 2, "message and bounce not received")
    message, bounce = recorder.messages[:2]
    assert message["to"] == ["joe@example.org", "ann@example.org"]
    assert message["tls"]
    assert message["from"] == "a@example.net"
    assert b"\nhello" in message["data"].replace(b"\r\n", b"\n")
    assert bounce["to"] == ["a@example.net"] and bounce["from"] == "<>"
    assert b"<bad@example.org>:\n127.0.0.2 does not like recipient." in \
        bounce["data"].replace(b"\r\n", b"\n")
    log = relay.log()
    assert log.count(": success: 127.0.0.2_accepted_message.") >= 3, log[-3000:]


def test_nullMXBounces(relay, receivers):
    """A domain whose only MX is '.' (RFC 7505) fails at once; the bounce says why."""
    relay.start()
    send(relay, "a@example.net", ["x@null.example.org"])
    recorder = receivers["127.0.0.2"]
    waitFor(relay, lambda: recorder.messages, "no bounce")
    assert b"null.example.org does not accept mail (null MX). (#5.1.10)" in \
        recorder.messages[0]["data"]
    assert "failure: Sorry,_null.example.org_does_not_accept_mail" in relay.log()


def test_tlsDestinations(relay, receivers):
    """
    control/tlsdestinations: a certificate that verifies against the named CA carries the
    mail over TLS; against another CA the delivery is deferred and nothing is sent.
    """
    certs = certificates()
    control(relay, "tlsdestinations", b"tls.example.org:" + certs["otherca"].encode() + b"\n")
    relay.start()
    send(relay, "a@example.net", ["joe@tls.example.org"])
    waitFor(relay, lambda: "TLS_negotiation_failed" in relay.log(), "no TLS deferral")
    assert "deferral: Connected_to_127.0.0.6_but_TLS_negotiation_failed" in relay.log()
    assert receivers["127.0.0.6"].messages == []
    relay.stop()
    control(relay, "tlsdestinations", b"tls.example.org:" + certs["ca"].encode() + b"\n")
    relay.start()
    os.kill(relay.process.pid, 14)  # SIGALRM: retry the deferred message now
    recorder = receivers["127.0.0.6"]
    waitFor(relay, lambda: recorder.messages, "not delivered after the CA was fixed")
    assert recorder.messages[0]["tls"] and recorder.messages[0]["to"] == ["joe@tls.example.org"]


def test_authToSmarthost(relay):
    """A route with user and password: AUTH after STARTTLS, then the message."""
    certs = certificates()
    server, recorder = startAiosmtpd("127.0.0.7", 2526, tls=(certs["cert"], certs["key"]),
                                     auth=(b"user", b"secret"))
    try:
        control(relay, "smtproutes", b"smart.example:127.0.0.7:2526|user|secret\n")
        relay.start()
        send(relay, "a@example.net", ["joe@smart.example"])
        waitFor(relay, lambda: recorder.messages, "nothing reached the smarthost")
        assert recorder.messages[0]["auth"] and recorder.messages[0]["tls"]
    finally:
        server.stop()


def test_mxpsDeliversByQMTP(relay):
    """An MX preference announcing QMTP (12801) sends by QMTP to port 209 of that MX: here
    another qmailtx, which queues the message with its QMTP Received line."""
    base = tempfile.mkdtemp(prefix="qmailtx-remote-qmtp-")
    peerRoot = os.path.join(base, "root")
    createRoot(peerRoot, "q.example.org")
    peer = Daemon(peerRoot, listeners=("qmtp",), host="127.0.0.4")
    peer.ports["qmtp"] = 209
    with open(os.path.join(peerRoot, "control", "concurrencylocal"), "w") as f:
        f.write("0\n")
    try:
        peer.start()
        waitForPort(209, "127.0.0.4")
        relay.start()
        send(relay, "a@example.net", ["joe@q.example.org"])

        def queued():
            found = []
            for dirpath, _, files in os.walk(os.path.join(peerRoot, "queue", "mess")):
                for name in files:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        found.append(f.read())
            return found
        waitFor(relay, queued, "nothing queued by the QMTP peer")
        assert b"with QMTP" in queued()[0]
        assert b"\nhello" in queued()[0]
    finally:
        peer.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_remoteDeliveryLogsOnlyQmailLines(relay, receivers):
    """
    A remote delivery with MX and address lookups adds no Twisted chatter to the log: no
    'Starting factory'/'Stopping factory' for its connection, none of the DNS protocol's
    'Starting protocol'/'Stopping protocol' for each query, not even at shutdown.
    """
    relay.start()
    send(relay, "a@example.net", ["joe@example.org"])
    waitFor(relay, lambda: "success: 127.0.0.2_accepted_message." in relay.log(), "not delivered")
    relay.stop()
    log = relay.log()
    for noise in ("factory <qmailtx.remote", "protocol <twisted.names.dns"):
        assert noise not in log, log[-3000:]
