"""
L{qmailtx.tcpserver.RulesFactory} on a real listening socket (a child process on
127.0.0.1): the environment and TCP_NODELAY reach the protocol over the real transport,
deny closes without a byte, the concurrency limit leaves clients waiting in the backlog,
the per-IP limit answers 421, and an edited rules file applies without a restart.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def server(tmp_path):
    started = []

    def start(rules=None, maxConn=40, maxPerIP=0):
        path = "-"
        if rules is not None:
            path = str(tmp_path / "tcp.test")
            with open(path, "wb") as f:
                f.write(rules)
        env = dict(os.environ, PYTHONPATH=REPO)
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.service.rulesserver", path, str(maxConn),
             str(maxPerIP)],
            stdout=subprocess.PIPE, env=env, cwd=REPO,
        )
        started.append(p)
        port = int(p.stdout.readline())
        return port, path

    yield start
    for p in started:
        p.kill()
        p.wait()


def connect(port, source="127.0.0.1"):
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def readEnv(s):
    data = b""
    while not data.endswith(b"\n.\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return dict(line.split("=", 1) for line in data.decode().splitlines()[:-1])


def silentFor(s, seconds):
    s.settimeout(seconds)
    try:
        return s.recv(1) is None
    except socket.timeout:
        return True
    finally:
        s.settimeout(5)


def test_envOverRealTransport(server):
    """The protocol sees the real transport (TCP_NODELAY on, it is the transport's protocol) and the env."""
    port, _ = server(rules=b'127.0.0.:allow,RELAYCLIENT=""\n')
    with connect(port) as s:
        env = readEnv(s)
        local = s.getsockname()
        s.sendall(b"echo\n")
        assert s.recv(5) == b"echo\n"
    assert env["TCPREMOTEIP"] == "127.0.0.1" and env["TCPREMOTEPORT"] == str(local[1])
    assert env["TCPLOCALIP"] == "127.0.0.1" and env["TCPLOCALPORT"] == str(port)
    assert env["PROTO"] == "TCP" and env["RELAYCLIENT"] == ""
    assert env["nodelay"] == "1" and env["direct"] == "1"
    assert "TCPREMOTEHOST" not in env and "TCPREMOTEINFO" not in env


def test_denyClosesSilently(server):
    """A denied client reads end-of-file without a single byte."""
    port, _ = server(rules=b"127.0.0.2:deny\n")
    with connect(port, "127.0.0.2") as s:
        assert s.recv(100) == b""
    with connect(port, "127.0.0.3") as s:
        assert readEnv(s)["TCPREMOTEIP"] == "127.0.0.3"


def test_concurrencyLimitWaitsInBacklog(server):
    """At the limit a new client is connected but hears nothing until a slot frees."""
    port, _ = server(maxConn=2)
    a, b = connect(port), connect(port)
    assert readEnv(a) and readEnv(b)
    c = connect(port)
    assert silentFor(c, 0.3)
    a.close()
    assert readEnv(c)["TCPREMOTEIP"] == "127.0.0.1"
    b.close()
    c.close()


def test_perIPLimit(server):
    """Beyond the per-IP limit a client gets the busy reply and the connection ends."""
    port, _ = server(maxPerIP=1)
    with connect(port, "127.0.0.5") as a:
        assert readEnv(a)
        with connect(port, "127.0.0.5") as b:
            assert b.recv(100) == b"421 too many connections from your address (#4.3.2)\r\n"
            assert b.recv(100) == b""
        with connect(port, "127.0.0.6") as c:
            assert readEnv(c)
    time.sleep(0.1)
    with connect(port, "127.0.0.5") as d:
        assert readEnv(d)


def test_rulesEditAppliesWithoutRestart(server):
    """Rewriting the rules file changes the answer for new clients within about a second."""
    port, path = server(rules=b"127.0.0.7:allow\n")
    with connect(port, "127.0.0.7") as s:
        assert readEnv(s)
    with open(path + ".new", "wb") as f:
        f.write(b"127.0.0.7:deny\n")
    os.rename(path + ".new", path)
    deadline = time.monotonic() + 5
    while True:
        with connect(port, "127.0.0.7") as s:
            if s.recv(100) == b"":
                break
        assert time.monotonic() < deadline
        time.sleep(0.2)
