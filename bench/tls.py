"""
The TLS rows of the benchmark (issue 7): STARTTLS handshakes per second and messages per
second over STARTTLS, 10 clients, qmailtx beside Postfix (both serving a P-256 certificate;
aiosmtpd's peer has no TLS).

The client is Python's C{ssl} in one thread per client: the handshake's cryptography runs in
OpenSSL without the GIL, and the same client drives every peer.  Every connection makes a full
handshake (no session resumption), which is what a mail server mostly sees.  Imports
L{bench.scenarios} late: that module adds these rows to its table.  Writes nothing.
"""

import socket
import ssl
import threading
import time

from bench.peers import RECIPIENT

KB = 1024

CLIENTS = 10
#: Handshakes in one batch of the handshake row (split over the clients).
HANDSHAKES = 400
#: Messages per connection and per batch in the messages row.
PER_CONNECTION = 10
MESSAGES = 600
#: Seconds any one reply may take.
REPLY_TIMEOUT = 30
#: Longest reply line read.
LINE_LIMIT = 4096

BODY = b"Subject: bench\r\n\r\n" + (b"x" * 70 + b"\r\n") * (KB // 72)


class ReplyError(Exception):
    """A reply that was not the one expected."""


def _clientContext():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _reply(f, expected):
    while True:
        line = f.readline(LINE_LIMIT)
        if not line:
            raise ReplyError("connection closed")
        if not line.startswith(expected):
            raise ReplyError(line[:80].decode("ascii", "replace"))
        if line[3:4] != b"-":
            return


def session(address, ctx, messages):
    """
    One connection: greeting, EHLO, STARTTLS, handshake, EHLO, C{messages} messages, QUIT.
    @return: messages that got their 250.
    """
    sock = socket.create_connection(address, timeout=REPLY_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        f = sock.makefile("rb")
        _reply(f, b"220")
        sock.sendall(b"EHLO bench.client\r\n")
        _reply(f, b"250")
        sock.sendall(b"STARTTLS\r\n")
        _reply(f, b"220")
        sock = ctx.wrap_socket(sock)
        f = sock.makefile("rb")
        sock.sendall(b"EHLO bench.client\r\n")
        _reply(f, b"250")
        done = 0
        for _ in range(messages):
            sock.sendall(b"MAIL FROM:<bench@bench.client>\r\n")
            _reply(f, b"250")
            sock.sendall(b"RCPT TO:<%s>\r\n" % RECIPIENT.encode())
            _reply(f, b"250")
            sock.sendall(b"DATA\r\n")
            _reply(f, b"354")
            sock.sendall(BODY + b".\r\n")
            _reply(f, b"250")
            done += 1
        sock.sendall(b"QUIT\r\n")
        _reply(f, b"221")
        return done
    finally:
        sock.close()


def runClients(address, sessionsPerClient, messages):
    """
    C{CLIENTS} threads, each running C{sessionsPerClient} sessions back to back.
    @return: (sessions completed, messages accepted, failures, seconds, first errors).
    """
    ctx = _clientContext()
    lock = threading.Lock()
    totals = {"sessions": 0, "messages": 0, "failed": 0, "errors": []}

    def client():
        for _ in range(sessionsPerClient):
            try:
                accepted = session(address, ctx, messages)
            except (OSError, ReplyError) as e:
                with lock:
                    totals["failed"] += 1
                    if len(totals["errors"]) < 5:
                        totals["errors"].append(str(e))
                continue
            with lock:
                totals["sessions"] += 1
                totals["messages"] += accepted

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    return totals["sessions"], totals["messages"], totals["failed"], seconds, totals["errors"]


def handshakeRate(peer, settings):
    """STARTTLS sessions (EHLO, STARTTLS, handshake, EHLO, QUIT) completed per second."""
    from bench.scenarios import Sample

    sessions, _, failed, seconds, errors = runClients(peer.address, HANDSHAKES // CLIENTS, 0)
    return Sample(sessions / seconds, failed,
                  {"handshakes": sessions, "seconds": seconds, "clientErrors": errors})


def messageRate(peer, settings):
    """1 KB messages accepted per second over STARTTLS, PER_CONNECTION per connection."""
    from bench.scenarios import Sample

    perClient = max(1, MESSAGES // (CLIENTS * PER_CONNECTION))
    _, accepted, failed, seconds, errors = runClients(peer.address, perClient, PER_CONNECTION)
    return Sample(accepted / seconds, failed,
                  {"messages": accepted, "seconds": seconds, "clientErrors": errors})


def tlsRows():
    """The TLS scenarios, judged against Postfix: no worse than it."""
    from bench.scenarios import Scenario, fasterBy

    return [
        Scenario(key="tls-handshakes-10c", label=f"STARTTLS handshakes {CLIENTS} clients",
                 unit="hs/s", measure=handshakeRate, only=("qmailtx", "postfix"),
                 target=fasterBy(1.0)),
        Scenario(key="tls-rate-10perconn-10c-1k",
                 label=f"STARTTLS {PER_CONNECTION} msg/conn {CLIENTS} clients  1 KB",
                 unit="msg/s", measure=messageRate, only=("qmailtx", "postfix"),
                 target=fasterBy(1.0)),
    ]
