"""
qmail's seed network on three loopback addresses, one C{twistd qmail} per address with its
own root (issue 5): a null client (127.0.0.2) with no local queue for its mail hands every
message by QMQP to the mail hub (127.0.0.3, port 628); the hub delivers its own domain to a
maildir and routes the gateway's domain by C{qmtproutes} over QMTP to the gateway
(127.0.0.4), which delivers it.  Injection goes both ways a null client offers:
C{qmailtx inject} (whose queue program is qmail-qmqpc in null-client mode) and SMTP to the
null client's own listener under C{--nullclient}.

As root, deliveries run as a throwaway user (tests/service/test_delivery.py's L{MailUser});
QMQP's port 628 needs root too (qmail-qmqpc has no port option).
"""

import os
import re
import smtplib
import subprocess
import sys
import tempfile
import time

import pytest

from qmailtx.cdbfile import buildCdb
from qmailtx.rootdir import createRoot
from qmailtx.users import assignRecords
from tests.service.daemon import REPO, Daemon
from tests.service.test_delivery import WAIT, MailUser

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="QMQP's port 628 and delivery as another user need root")

CLIENT, HUB, GATEWAY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
QMQP_PORT = 628
DATE = rb"[0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} -0000"


class Host:
    """One qmail root for C{me}, mailboxes of C{users} delivered to the test user's homes."""

    def __init__(self, base, me, user, users=()):
        self.root = os.path.join(base, me)
        createRoot(self.root, me)
        self.homes = {}
        assign = b""
        for name in users:
            home = self.homes[name] = user.home()
            assign += f"={name}:{name}:{user.uid}:{user.gid}:{home}:::\n".encode()
        buildCdb(os.path.join(self.root, "users", "cdb"), os.path.join(self.root, "users", "tmp"),
                 assignRecords(assign + b".\n"))
        self.daemon = None

    def control(self, name, data):
        with open(os.path.join(self.root, "control", name), "wb") as f:
            f.write(data)

    def rules(self, name, data):
        with open(os.path.join(self.root, "rules", name), "wb") as f:
            f.write(data)

    def start(self, host, listeners, extra=(), fixedPorts=None):
        self.daemon = Daemon(self.root, listeners=listeners, extra=extra, host=host)
        self.daemon.ports.update(fixedPorts or {})
        self.daemon.start()
        return self.daemon

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()


@pytest.fixture
def network():
    user = MailUser()
    base = tempfile.mkdtemp(dir=user.base)
    os.chmod(base, 0o755)
    client = Host(base, "client.example", user)
    hub = Host(base, "hub.example", user, ["joe"])
    gateway = Host(base, "gw.example", user, ["ann"])
    hosts = [gateway, hub, client]
    try:
        gateway.start(GATEWAY, ("qmtp",))
        hub.control("qmtproutes", b"gw.example:%s:%d\n"
                    % (GATEWAY.encode(), gateway.daemon.ports["qmtp"]))
        hub.control("smtproutes", b":127.0.0.1:1\n")
        hub.rules("qmqp", b"127.:allow\n:deny\n")
        hub.start(HUB, ("qmqp",), fixedPorts={"qmqp": QMQP_PORT})
        client.control("qmqpservers", b"%s\n" % HUB.encode())
        client.control("rcpthosts", b"hub.example\ngw.example\n")
        client.start(CLIENT, ("smtp",), extra=["--nullclient"])
        yield client, hub, gateway
    finally:
        for host in hosts:
            host.stop()
        user.close()


def inject(root, sender, recipients, message):
    return subprocess.run(
        [sys.executable, "-m", "qmailtx.scripts.main", "inject", "--root", root, "-f", sender,
         *recipients],
        input=message, capture_output=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO, QMAILUSER="alice", QMAILHOST="client.example"))


def mailsIn(host, name, count, daemons, wait=WAIT):
    """The first C{count} messages of C{name}'s maildir on C{host}, waiting for them."""
    new = os.path.join(host.homes[name], "Maildir", "new")
    deadline = time.monotonic() + wait
    while len(os.listdir(new)) < count:
        if time.monotonic() > deadline:
            logs = "\n".join(f"== {d.root}\n{d.log()[-2500:]}" for d in daemons)
            raise AssertionError(f"no {count} message(s) in {new}; logs:\n{logs}")
        time.sleep(0.05)
    out = []
    for n in sorted(os.listdir(new))[:count]:
        with open(os.path.join(new, n), "rb") as f:
            out.append(f.read())
    return out


def received(mail):
    """The Received fields of a delivered message, top to bottom, unfolded lines kept."""
    return re.findall(rb"^Received: .*\n(?:[ \t].*\n)*", mail, re.M)


def test_nullClientHubGateway(network):
    """One message injected on the null client reaches joe on the hub and ann behind the
    gateway; each copy carries the Received chain of the hops it took (QMQP into the hub,
    QMTP into the gateway, each queue's own line), and the null client queued nothing."""
    client, hub, gateway = network
    daemons = [client.daemon, hub.daemon, gateway.daemon]
    message = b"Subject: seed network\n\nfrom the null client\n"
    p = inject(client.root, "alice@client.example", ["joe@hub.example", "ann@gw.example"],
               message)
    assert p.returncode == 0, p.stderr

    [joe] = mailsIn(hub, "joe", 1, daemons)
    assert joe.startswith(b"Return-Path: <alice@client.example>\n"
                          b"Delivered-To: joe@hub.example\n")
    hubChain = [
        rb"Received: \(qmail [0-9]+ invoked from network\); " + DATE + rb"\n",
        rb"Received: from unknown \(127\.0\.0\.1\)\n  by 127\.0\.0\.3 with QMQP; " + DATE + rb"\n",
    ]
    assert len(received(joe)) == 2
    for pattern, line in zip(hubChain, received(joe)):
        assert re.fullmatch(pattern, line), line
    assert joe.endswith(b"Subject: seed network\n\nfrom the null client\n")

    [ann] = mailsIn(gateway, "ann", 1, daemons)
    assert ann.startswith(b"Return-Path: <alice@client.example>\n"
                          b"Delivered-To: ann@gw.example\n")
    gatewayChain = [
        rb"Received: \(qmail [0-9]+ invoked from network\); " + DATE + rb"\n",
        rb"Received: from unknown \(127\.0\.0\.1\)\n  by 127\.0\.0\.4 with QMTP; " + DATE + rb"\n",
    ] + hubChain
    assert len(received(ann)) == 4
    for pattern, line in zip(gatewayChain, received(ann)):
        assert re.fullmatch(pattern, line), line
    assert ann.split(b"\n\n", 1)[1] == b"from the null client\n"
    assert joe.split(b"Received: from unknown", 1)[1].split(b"\n", 2)[2] == \
        ann.split(b"with QMQP; ", 1)[1].split(b"\n", 1)[1]

    assert os.listdir(os.path.join(client.root, "queue", "todo")) == []
    assert not any(files for _, _, files in os.walk(os.path.join(client.root, "queue", "mess")))
    qmtp = re.search(r"delivery \d+: success: ok_\d+_qp_(\d+)\n", hub.daemon.log())
    assert qmtp, hub.daemon.log()[-3000:]
    assert f"from <alice@client.example> qp {qmtp.group(1)} " in gateway.daemon.log()


def test_nullClientSMTPListener(network):
    """SMTP to the null client's own listener (--nullclient) is passed on by QMQP: the
    250 names the hub's qp, the gateway's mailbox gets it with an SMTP Received line
    below the hub's QMQP one, and nothing is queued on the null client."""
    client, hub, gateway = network
    with smtplib.SMTP(CLIENT, client.daemon.port) as s:
        s.ehlo("workstation.client.example")
        s.mail("bob@client.example")
        s.rcpt("ann@gw.example")
        code, reply = s.data(b"Subject: by SMTP\r\n\r\nvia the null client's listener\r\n")
    assert code == 250, reply
    qp = re.fullmatch(rb"ok [0-9]+ qp ([0-9]+)", reply).group(1).decode()
    [ann] = mailsIn(gateway, "ann", 1, [client.daemon, hub.daemon, gateway.daemon])
    chain = received(ann)
    assert len(chain) == 5
    assert re.fullmatch(rb"Received: from unknown \(127\.0\.0\.1\)\n  by 127\.0\.0\.3 with QMQP; "
                        + DATE + rb"\n", chain[3]), chain[3]
    assert re.fullmatch(rb"Received: from unknown \(HELO workstation\.client\.example\) "
                        rb"\(127\.0\.0\.1\)\n  by 127\.0\.0\.2 with SMTP; " + DATE + rb"\n",
                        chain[4]), chain[4]
    assert ann.endswith(b"Subject: by SMTP\n\nvia the null client's listener\n")
    assert f"from <bob@client.example> qp {qp} " in hub.daemon.log()
    assert not any(files for _, _, files in os.walk(os.path.join(client.root, "queue", "mess")))
