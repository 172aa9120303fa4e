"""
QMTP and QMQP servers live on 127.0.0.1, behind the rules layer, writing a real queue,
driven by an independent client written here from the protocol documents (netstrings by
hand, raw sockets), and by qmailtx's own QMQP client and `qmailtx qmqpc` command.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from qmailtx import qmqpc
from tests.service.packageservers import REPO, PackageServers

QMTP_RULES = b'127.0.0.1:allow,RELAYCLIENT=""\n:allow\n'
QMQP_RULES = b"127.0.0.1:allow\n:deny\n"


# -- an independent client, from RFCQMTP and cr.yp.to/proto/qmqp.html ------------------

def ns(data):
    return str(len(data)).encode("ascii") + b":" + data + b","


def readExactly(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("connection closed after %r" % out)
        out += chunk
    return out


def readNetstring(sock):
    digits = b""
    while True:
        c = readExactly(sock, 1)
        if c == b":":
            break
        assert c.isdigit(), (digits, c)
        digits += c
    data = readExactly(sock, int(digits))
    assert readExactly(sock, 1) == b","
    return data


def readAll(sock, timeout=10):
    sock.settimeout(timeout)
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


def qmtpPackage(text, sender, recipients, dos=False):
    """RFCQMTP: message with its encoding byte, sender, then the recipient list."""
    if dos:
        body = b"\r" + text.replace(b"\n", b"\r\n")
    else:
        body = b"\n" + text
    return ns(body) + ns(sender) + ns(b"".join(ns(r) for r in recipients))


def qmqpPackage(text, sender, recipients):
    return ns(ns(text) + ns(sender) + b"".join(ns(r) for r in recipients))


def connect(port, source="127.0.0.1"):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    return sock


# -- the queue, read back ---------------------------------------------------------------

def queued(root):
    """Every message in todo/, in qp order: (message bytes, sender, recipients)."""
    out = []
    todo = os.path.join(root, "queue", "todo")
    for name in sorted(os.listdir(todo), key=int):
        with open(os.path.join(todo, name), "rb") as f:
            records = [(r[:1], r[1:]) for r in f.read().split(b"\0") if r]
        with open(os.path.join(root, "queue", "mess", str(int(name) % 23), name), "rb") as f:
            message = f.read()
        sender = [v for k, v in records if k == b"F"][0]
        out.append((message, sender, [v for k, v in records if k == b"T"]))
    return sorted(out, key=lambda m: int(m[0].split(b" ", 3)[2]))


def assertNoPartialMessage(root):
    """Nothing half-written: no pid/ leftovers; every mess and intd file has its todo link
    (intd stays until qmail-send processes todo, as in qmail)."""
    queue = os.path.join(root, "queue")
    waitFor(lambda: os.listdir(os.path.join(queue, "pid")) == [])  # aborts clean up off-thread
    todo = set(os.listdir(os.path.join(queue, "todo")))
    assert set(os.listdir(os.path.join(queue, "intd"))) <= todo
    def mess():
        return {n for d in range(23) for n in os.listdir(os.path.join(queue, "mess", str(d)))}

    waitFor(lambda: mess() == todo)


def body(message, proto):
    """The message after the queue's and the server's Received lines (which we check)."""
    lines = message.split(b"\n", 3)
    assert lines[0].startswith(b"Received: (qmail ") and b" invoked from network); " in lines[0]
    assert lines[1] == b"Received: from unknown (127.0.0.1)"
    assert lines[2].startswith(b"  by 127.0.0.1 with " + proto + b"; ")
    return lines[3]


@pytest.fixture
def servers(qmailRoot):
    rules = str(qmailRoot) + ".rules"
    os.mkdir(rules)
    with open(os.path.join(rules, "qmtp"), "wb") as f:
        f.write(QMTP_RULES)
    with open(os.path.join(rules, "qmqp"), "wb") as f:
        f.write(QMQP_RULES)
    s = PackageServers(qmailRoot, os.path.join(rules, "qmtp"), os.path.join(rules, "qmqp"))
    s.root = str(qmailRoot)
    yield s
    s.stop()


def waitFor(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- QMTP -------------------------------------------------------------------------------

def test_qmtpPipelinedBothEncodings(servers):
    """Two packages sent at once (LF and CR LF encodings): one K per recipient, in order,
    and both messages queued with identical LF bodies and their envelopes."""
    text = b"Subject: qmtp\n\nline one\nline two\n"
    sock = connect(servers.ports["qmtp"])
    sock.sendall(qmtpPackage(text, b"a@example.org", [b"x@mx.example.com", b"y@far.example"])
                 + qmtpPackage(text, b"", [b"z@mx.example.com"], dos=True))
    replies = [readNetstring(sock) for _ in range(3)]
    assert [r[:4] for r in replies] == [b"Kok "] * 3
    assert replies[0] == replies[1] != replies[2]
    sock.close()
    msgs = queued(servers.root)
    assert [(body(m, b"QMTP"), s, r) for m, s, r in msgs] == [
        (text, b"a@example.org", [b"x@mx.example.com", b"y@far.example"]),
        (text, b"", [b"z@mx.example.com"])]
    qps = [int(r.split(b" qp ")[1]) for r in (replies[0], replies[2])]
    assert [m.split(b" ")[2] for m, s, r in msgs] == [str(q).encode() for q in qps]
    assertNoPartialMessage(servers.root)


def test_qmtpRcpthostsWithoutRelayclient(servers):
    """From an address without RELAYCLIENT, recipients outside rcpthosts get the 66: reply
    and only the local one is queued."""
    sock = connect(servers.ports["qmtp"], source="127.0.0.2")
    sock.sendall(qmtpPackage(b"hi\n", b"a@b", [b"far@away.example", b"me@localhost"]))
    assert readNetstring(sock) == b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
    assert readNetstring(sock).startswith(b"Kok ")
    sock.close()
    [(message, sender, recipients)] = queued(servers.root)
    assert recipients == [b"me@localhost"]


@pytest.mark.parametrize("garbage", [
    b"12x:",
    b"5:\nabcd;",
    b"5:\nabcd,3:a@b,9:3:a@b,xx,,",
    b"0:,",
    b"5:Xabcd,",
    b"999999999999:",
])
def test_qmtpBadInputClosesAfterGoodPackage(servers, garbage):
    """A good package followed by a malformed one: the good one's K arrives, then the
    connection closes; nothing of the bad one is queued."""
    sock = connect(servers.ports["qmtp"])
    sock.sendall(qmtpPackage(b"good\n", b"a@b", [b"me@localhost"]) + garbage + b"1:\n,0:,0:,")
    data = readAll(sock)
    assert data.startswith(b"2") and b":Kok " in data and data.endswith(b",")
    assert data.count(b",") == 1
    assert len(queued(servers.root)) == 1
    assertNoPartialMessage(servers.root)


def test_qmtpDroppedMidMessageLeavesNothing(servers):
    """A client that disconnects in the middle of a large message leaves no trace."""
    sock = connect(servers.ports["qmtp"])
    sock.sendall(b"1000000:\n" + b"x" * 300000)
    time.sleep(0.2)
    sock.close()
    time.sleep(0.3)
    assert queued(servers.root) == []
    assertNoPartialMessage(servers.root)


def test_qmtpLargeMessage(servers):
    """A 3 MB message streams through byte-exact."""
    text = b"Subject: big\n\n" + (b"0123456789" * 7 + b"\n") * 40000
    sock = connect(servers.ports["qmtp"])
    sock.sendall(qmtpPackage(text, b"a@b", [b"me@localhost"]))
    assert readNetstring(sock).startswith(b"Kok ")
    [(message, sender, recipients)] = queued(servers.root)
    assert body(message, b"QMTP") == text


# -- QMQP -------------------------------------------------------------------------------

def test_qmqpIndependentClient(servers):
    """The spec's example package: K reply, connection closed by the server, message
    queued verbatim with the QMQP Received line, any recipient accepted."""
    sock = connect(servers.ports["qmqp"])
    sock.sendall(b"76:30:Subject: hi\n\nA simple message\n,18:sender@example.org,16:rcpt@example.net,,")
    reply = readAll(sock)
    assert reply.startswith(b"22:Kok ") or reply[reply.index(b":") + 1:][:4] == b"Kok "
    [(message, sender, recipients)] = queued(servers.root)
    assert body(message, b"QMQP") == b"Subject: hi\n\nA simple message\n"
    assert (sender, recipients) == (b"sender@example.org", [b"rcpt@example.net"])


def test_qmqpBadAddress(servers):
    """A 1000-byte recipient: D reply, nothing queued."""
    sock = connect(servers.ports["qmqp"])
    sock.sendall(qmqpPackage(b"m\n", b"s@x", [b"r@x", b"r" * 1000]))
    assert readAll(sock) == ns(b"Dsorry, I can't accept addresses like that (#5.1.3)")
    assert queued(servers.root) == []
    assertNoPartialMessage(servers.root)


def test_qmqpMalformedClosesSilently(servers):
    """An inner netstring running past the outer one: closed without a reply."""
    sock = connect(servers.ports["qmqp"])
    sock.sendall(b"10:3:abc,9:x,,")
    assert readAll(sock) == b""
    assert queued(servers.root) == []


def test_qmqpDeniedByRules(servers):
    """QMQP only from listed clients: 127.0.0.2 is denied, without a byte written."""
    sock = connect(servers.ports["qmqp"], source="127.0.0.2")
    try:
        sock.sendall(qmqpPackage(b"m\n", b"s", [b"r"]))
        assert readAll(sock) == b""
    except ConnectionResetError:
        pass
    assert queued(servers.root) == []


# -- the QMQP client against the server, and against hand-written servers ---------------

def test_qmqpSendAgainstServer(servers):
    """qmailtx's client hands a message to qmailtx's server: exit 0, the K report."""
    result = qmqpc.qmqpSend(["127.0.0.1"], b"Subject: c\n\nbody\n", b"s@x", [b"r1@y", b"r2@z"],
                            port=servers.ports["qmqp"])
    assert result.exitCode == 0 and result.report.startswith(b"Kok ")
    [(message, sender, recipients)] = queued(servers.root)
    assert body(message, b"QMQP") == b"Subject: c\n\nbody\n"
    assert recipients == [b"r1@y", b"r2@z"]


def runQmqpc(root, port, message, envelope):
    env = dict(os.environ, PYTHONPATH=REPO)
    r, w = os.pipe()
    os.write(w, envelope)
    os.close(w)
    p = subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", "qmqpc", "--root", root,
                        "--port", str(port)], input=message, stdout=r, env=env, timeout=60)
    os.close(r)
    return p.returncode


def test_qmqpcCommandFailover(servers, tmp_path):
    """`qmailtx qmqpc` skips non-IP lines, moves past a refused server to the next one,
    and exits 0 once the live server accepted; nothing is queued on the client side."""
    client = tmp_path / "client"
    (client / "control").mkdir(parents=True)
    (client / "control" / "qmqpservers").write_bytes(b"hub.example\n127.0.0.3\n127.0.0.1\n")
    code = runQmqpc(str(client), servers.ports["qmqp"], b"Subject: x\n\nnull client\n",
                    b"Fme@client\0Tyou@hub\0\0")
    assert code == 0
    [(message, sender, recipients)] = queued(servers.root)
    assert body(message, b"QMQP") == b"Subject: x\n\nnull client\n"
    assert (sender, recipients) == (b"me@client", [b"you@hub"])


def test_qmqpcCommandErrors(tmp_path):
    """Missing qmqpservers: 55; bad envelope: 91; all servers refused: 73."""
    client = tmp_path / "client"
    (client / "control").mkdir(parents=True)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    assert runQmqpc(str(client), free, b"m", b"Fa\0\0") == 55
    (client / "control" / "qmqpservers").write_bytes(b"127.0.0.1\n")
    assert runQmqpc(str(client), free, b"m", b"Xa\0\0") == 91
    assert runQmqpc(str(client), free, b"m", b"Fa\0Tb\0") == 91
    assert runQmqpc(str(client), free, b"m", b"Fa\0Tb\0\0") == 73


class FakeQmqpServer:
    """A hand-written QMQP server: reads the package, answers C{reply} (or hangs up)."""

    def __init__(self, reply, host="127.0.0.1", port=0):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(5)
        self.port = self.listener.getsockname()[1]
        self.reply = reply
        self.received = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            digits = b""
            while not digits.endswith(b":"):
                digits += conn.recv(1)
            self.received.append(readExactly(conn, int(digits[:-1]) + 1))
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("reply, code", [
    (b"11:Kok 1 qp 22,", 0),
    (b"22:Ztemporarily not today,", 71),
    (b"8:Dgo away,", 31),
    (None, 74),
    (b"5:xxxxx,", 74),
])
def test_qmqpSendExitCodes(reply, code):
    """The first K/Z/D of the reply decides 0/71/31; a connection that breaks first is 74.
    The request the server saw is a well-formed QMQP package."""
    fake = FakeQmqpServer(reply)
    try:
        result = qmqpc.qmqpSend(["127.0.0.1"], b"m\n", b"s", [b"r1", b"r2"], port=fake.port,
                                timeout=5)
    finally:
        fake.close()
    assert result.exitCode == code
    assert fake.received == [b"2:m\n,1:s,2:r1,2:r2,,"]
    if code == 71:
        assert result.report == b"Ztemporarily not today"


def test_qmqpSendNoFailoverAfterConnect():
    """Once connected, a broken connection is final (74): the next server is not tried."""
    broken = FakeQmqpServer(None, host="127.0.0.1")
    good = FakeQmqpServer(b"4:Kok ,", host="127.0.0.2", port=broken.port)
    try:
        result = qmqpc.qmqpSend(["127.0.0.1", "127.0.0.2"], b"m", b"s", [b"r"], port=broken.port,
                                timeout=5)
    finally:
        broken.close()
        good.close()
    assert result.exitCode == 74
    assert good.received == []


def test_qmqpSendConnectTimeout():
    """A server that never completes the handshake: 72 remembered, next server used."""
    hung = socket.socket()
    hung.bind(("127.0.0.4", 0))
    hung.listen(0)
    port = hung.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.4", port))
        fillers.append(s)
    time.sleep(0.1)
    try:
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.4", port))
            pytest.skip("kernel accepted past a full backlog; cannot simulate a timeout")
        except socket.timeout:
            pass
        finally:
            probe.close()
        result = qmqpc.qmqpSend(["127.0.0.4"], b"m", b"s", [b"r"], port=port, connectTimeout=0.3)
        assert result.exitCode == 72
        good = FakeQmqpServer(b"4:Kok ,", host="127.0.0.5", port=port)
        try:
            result = qmqpc.qmqpSend(["127.0.0.4", "127.0.0.5"], b"m", b"s", [b"r"], port=port,
                                    connectTimeout=0.3)
        finally:
            good.close()
        assert result.exitCode == 0
    finally:
        for s in fillers:
            s.close()
        hung.close()


def test_qmqpSendNoServers():
    """An empty server list (or only non-IP lines) is exit 55."""
    assert qmqpc.qmqpSend([], b"m", b"s", [b"r"]).exitCode == 55
    assert qmqpc.qmqpSend(["hub.example"], b"m", b"s", [b"r"]).exitCode == 55


@pytest.mark.skipif(os.geteuid() != 0, reason="needs port 628 (qmail-qmqpc has no port option)")
def test_queueCommandInNullClientMode(tmp_path):
    """With control/qmqpservers, `qmailtx queue` is qmail-qmqpc: the message goes to the
    QMQP server on port 628, exit 0, and nothing is queued locally."""
    from qmailtx.rootdir import createRoot

    root = str(tmp_path / "client")
    createRoot(root, "client.example")
    with open(os.path.join(root, "control", "qmqpservers"), "wb") as f:
        f.write(b"127.0.0.9\n")
    fake = FakeQmqpServer(b"11:Kok 1 qp 22,", host="127.0.0.9", port=qmqpc.PORT)
    r, w = os.pipe()
    os.write(w, b"Fme@client.example\0Tyou@hub.example\0\0")
    os.close(w)
    try:
        p = subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", "queue", "--root", root],
                           input=b"Subject: n\n\nnull\n", stdout=r, timeout=60,
                           env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        os.close(r)
        fake.thread.join(5)
        fake.close()
    assert p.returncode == 0
    assert fake.received == [b"17:Subject: n\n\nnull\n,17:me@client.example,15:you@hub.example,,"]
    assert queued(root) == []


def test_twistdListeners(qmailRoot):
    """`twistd qmail --qmtp ... --qmqp ...` serves both beside SMTP; QMQP obeys its own
    rules file (rules/qmqp: loopback 127.0.0.1 only) while QMTP takes everyone."""
    from tests.service.daemon import Daemon

    with open(os.path.join(qmailRoot, "rules", "qmqp"), "wb") as f:
        f.write(QMQP_RULES)
    daemon = Daemon(qmailRoot, listeners=("smtp", "qmtp", "qmqp")).start()
    try:
        sock = connect(daemon.ports["qmtp"], source="127.0.0.2")
        sock.sendall(qmtpPackage(b"via qmtp\n", b"qmtp@b", [b"me@localhost"]))
        qmtpReply = readNetstring(sock)
        assert qmtpReply.startswith(b"Kok ")
        sock.close()
        sock = connect(daemon.ports["qmqp"])
        sock.sendall(qmqpPackage(b"via qmqp\n", b"qmqp@b", [b"anyone@far.example"]))
        qmqpReply = readNetstring(sock)
        assert qmqpReply.startswith(b"Kok ")
        sock.close()
        sock = connect(daemon.ports["qmqp"], source="127.0.0.2")
        try:
            sock.sendall(qmqpPackage(b"denied\n", b"denied@b", [b"x@y"]))
            assert readAll(sock) == b""
        except ConnectionResetError:
            pass
        # qmail-send runs in the daemon and takes todo/ at once: look for its log lines.
        for sender, reply in ((b"qmtp@b", qmtpReply), (b"qmqp@b", qmqpReply)):
            qp = reply.split(b" qp ")[1].decode()
            line = f"from <{sender.decode()}> qp {qp} "
            waitFor(lambda: line in daemon.log())
        assert "<denied@b>" not in daemon.log()
    finally:
        daemon.stop()


def test_qmqpWithoutRulesRefusesEveryone(qmailRoot, tmp_path):
    """
    QMQP checks no rcpthosts: qmail-qmqpd relies on tcpserver's rules alone.  A QMQP
    listener with no rules file is therefore not 'allow everyone' (an open relay) but
    'refuse everyone', said once at start; `qmailtx init` writes rules/qmqp for
    loopback null clients, so the listener works out of the box on 127.0.0.1.
    """
    from qmailtx.rootdir import createRoot
    from tests.service.daemon import Daemon

    made = tmp_path / "made"
    createRoot(str(made), "made.example")
    rules = (made / "rules" / "qmqp").read_text()
    assert "127.0.0.1:allow" in rules and rules.rstrip().endswith(":deny")

    for old in (qmailRoot / "rules").glob("qmqp*"):
        old.unlink()
    daemon = Daemon(qmailRoot, listeners=("smtp", "qmqp")).start()
    try:
        sock = connect(daemon.ports["qmqp"])
        try:
            sock.sendall(qmqpPackage(b"relay?\n", b"attacker@evil.example",
                                     [b"victim@remote.example.net"]))
            assert readAll(sock) == b""
        except ConnectionResetError:
            pass
        assert "qmqp: no rules file: every client is refused" in daemon.log()
        assert "<attacker@evil.example>" not in daemon.log()
    finally:
        daemon.stop()
