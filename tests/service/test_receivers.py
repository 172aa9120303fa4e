"""
C{twistd qmail --receivers N}: SMTP and QMTP sessions run in receiver processes while the
daemon keeps tcpserver's role (rules, environment, limits) and qmail-send hears of each
message at once.
"""

import os
import re
import signal
import smtplib
import socket
import time

import pytest

from qmailtx.scripts.main import main as qmailtx
from tests.service.daemon import Daemon

pytestmark = pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="needs send_fds")


def waitFor(predicate, timeout=15.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def readyPids(daemon, count):
    """The pids of the first C{count} receivers the log says are ready."""
    def ready():
        pids = re.findall(r"receiver \d+: ready, pid (\d+)", daemon.log())
        return [int(p) for p in pids] if len(pids) >= count else None
    return waitFor(ready)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    assert qmailtx(["qmailtx", "init", str(root), "--me", "receivers.test"]) == 0
    return root


def start(root, listeners=("smtp",), extra=()):
    return Daemon(root, listeners, ["--receivers", "2", *extra]).start()


def greeting(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s, s.recv(512)


def test_sessionsRunInReceiversAndSendHearsAtOnce(root):
    """Messages taken by receivers carry a receiver's qp in their Received line, and
    qmail-send logs 'new msg' for each within seconds (no trigger, no todo/ scan needed)."""
    daemon = start(root)
    try:
        pids = readyPids(daemon, 2)
        for i in range(6):
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
                client.sendmail("a@example.org", ["postmaster@receivers.test"],
                                b"Subject: r%d\r\n\r\nbody\r\n" % i)
        waitFor(lambda: daemon.log().count("new msg ") >= 6)
        qps = [int(q) for q in re.findall(r"info msg \d+: .* qp (\d+)", daemon.log())]
        assert len(qps) == 6
        assert all(any(pid <= qp < pid + 1000 for pid in pids) for qp in qps)
        assert all(alive(pid) for pid in pids)
    finally:
        daemon.stop()
    waitFor(lambda: not any(alive(pid) for pid in pids))


def test_ipv6ClientsRunInReceivers(root, tmp_path):
    """A client on ::1 is handed to a receiver like one on 127.0.0.1: the rules' default
    entry relays for it, and its Received line and log name the IPv6 address."""
    (root / "control" / "concurrencyremote").write_text("0\n")
    rules = tmp_path / "rules.smtp"
    rules.write_text(':allow,RELAYCLIENT=""\n')
    daemon = Daemon(root, ["smtp"], ["--receivers", "1", "--rules", f"smtp={rules}"],
                    host="::1").start()
    try:
        (pid,) = readyPids(daemon, 1)
        with smtplib.SMTP("::1", daemon.port, timeout=10) as client:
            assert client.sendmail("a@example.org", ["far@elsewhere.example"],
                                   b"Subject: six\r\n\r\nbody\r\n") == {}
        waitFor(lambda: "info msg " in daemon.log())
        (msgid, qp), = re.findall(r"info msg (\d+): .* qp (\d+)", daemon.log())
        assert pid <= int(qp) < pid + 1000
        mess = root / "queue" / "mess" / str(int(msgid) % 23) / msgid
        received = mess.read_bytes().split(b"\n")[1]
        assert received.startswith(b"Received: from unknown (HELO ")
        assert received.endswith(b" (::1)")
    finally:
        daemon.stop()


def test_rulesEnvironmentReachesReceiver(root, tmp_path):
    """The daemon's rules layer decides and builds the environment; the receiver's session
    obeys it (DATABYTES from a rule refuses a large message with qmail's 552)."""
    rules = tmp_path / "rules.smtp"
    rules.write_text('127.0.0.1:allow,DATABYTES="200"\n')
    daemon = start(root, extra=["--rules", f"smtp={rules}"])
    try:
        readyPids(daemon, 2)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.ehlo()
            code, _ = client.mail("a@example.org")
            assert code == 250
            client.rcpt("postmaster@receivers.test")
            code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 400 + b"\r\n")
            assert code == 552 and b"databytes" in text
            assert "tcpserver: ok" in daemon.log()
    finally:
        daemon.stop()


def test_connectionLimitCountsReceiverSessions(root):
    """tcpserver's -c holds while receivers run the sessions: with --maxconn smtp=2 a third
    client waits unanswered until one of the first two closes (the receiver's report frees
    the slot)."""
    daemon = start(root, extra=["--maxconn", "smtp=2"])
    try:
        readyPids(daemon, 2)
        first, banner1 = greeting(daemon.port)
        second, banner2 = greeting(daemon.port)
        assert banner1.startswith(b"220 ") and banner2.startswith(b"220 ")
        third = socket.create_connection(("127.0.0.1", daemon.port), timeout=1.0)
        with pytest.raises(socket.timeout):
            third.recv(512)
        first.sendall(b"QUIT\r\n")
        assert first.recv(512).startswith(b"221 ")
        first.close()
        third.settimeout(5.0)
        assert third.recv(512).startswith(b"220 ")
        second.close()
        third.close()
    finally:
        daemon.stop()


def test_deadReceiverFreesItsSlotsAndComesBack(root):
    """A receiver killed with SIGKILL: its connections' slots are freed, new connections are
    served meanwhile (by the other receiver or the daemon itself), and it is started again."""
    daemon = start(root, extra=["--maxconn", "smtp=1"])
    try:
        pids = readyPids(daemon, 2)
        held, banner = greeting(daemon.port)
        assert banner.startswith(b"220 ")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        held.settimeout(5.0)
        assert held.recv(512) == b""
        waitFor(lambda: daemon.log().count("exited") >= 2)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.sendmail("a@example.org", ["postmaster@receivers.test"], b"Subject: x\r\n\r\nx\r\n")
        readyPids(daemon, 4)
    finally:
        daemon.stop()


def test_receiversEndWithTheDaemonEvenIfKilled(root):
    """SIGKILL of the daemon leaves no receiver behind: each sees its channel close and exits."""
    daemon = start(root)
    try:
        pids = readyPids(daemon, 2)
    finally:
        daemon.kill()
    waitFor(lambda: not any(alive(pid) for pid in pids))


def qmtpPackage(message, sender, recipients):
    def netstring(data):
        return b"%d:%s," % (len(data), data)
    body = b"\n" + message
    return netstring(body) + netstring(sender) + netstring(b"".join(netstring(r) for r in recipients))


def test_qmtpThroughReceiver(root):
    """A QMTP package sent to a daemon with receivers is accepted with a K and queued."""
    daemon = start(root, listeners=("smtp", "qmtp"))
    try:
        readyPids(daemon, 2)
        with socket.create_connection(("127.0.0.1", daemon.ports["qmtp"]), timeout=10) as s:
            s.sendall(qmtpPackage(b"Subject: q\n\nbody\n", b"a@example.org",
                                  [b"postmaster@receivers.test"]))
            answer = s.recv(512)
        assert re.match(rb"\d+:K", answer)
        waitFor(lambda: "new msg " in daemon.log())
    finally:
        daemon.stop()


def test_receiverWritesItsMessagesOnSpareInodes(root):
    """Spare queue files the daemon's pool holds at start are handed to the receiver, whose
    messages then live on those inodes (a message's id is its mess/ inode) instead of newly
    allocated ones: the daemon keeps its own share and hands over the rest."""
    for name in ("concurrencylocal", "concurrencyremote"):
        (root / "control" / name).write_text("0\n")
    spare = root / "queue" / "spare"
    spare.mkdir(mode=0o700, exist_ok=True)
    for n in range(300):
        (spare / str(n)).write_bytes(b"an old queue file's bytes\n" * 3)
    inodes = {(spare / str(n)).stat().st_ino for n in range(300)}
    daemon = Daemon(root, ["smtp"], ["--receivers", "1"]).start()
    try:
        (pid,) = readyPids(daemon, 1)
        time.sleep(1.5)
        for i in range(6):
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
                client.sendmail("a@example.org", ["postmaster@receivers.test"],
                                b"Subject: s%d\r\n\r\nbody\r\n" % i)
        waitFor(lambda: daemon.log().count("info msg ") >= 6)
        found = re.findall(r"info msg (\d+): .* qp (\d+)", daemon.log())
        assert all(pid <= int(qp) < pid + 1000 for _, qp in found)
        msgids = [int(m) for m, _ in found]
        assert sum(m in inodes for m in msgids) >= 5, (msgids, sorted(inodes)[:5])
        for m in msgids:
            body = (root / "queue" / "mess" / str(m % 23) / str(m)).read_bytes()
            assert body.startswith(b"Received: ") and body.endswith(b"\n\nbody\n")
            assert b"old queue file" not in body
        assert len(os.listdir(spare)) < 300 - 5
    finally:
        daemon.stop()
