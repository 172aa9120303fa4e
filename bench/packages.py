"""
The QMTP and QMQP rows of the benchmark (issue 5): 1 KB messages accepted per second from
10 clients, one message per connection, beside SMTP measured by the same client the same way.

QMQP carries one message per connection, so every row here does: C{bench/pkgload.c} (built
on first use beside smtpload) opens a connection per message for all three protocols, so
the rows differ only in the protocol.  QMTP and QMQP rows are qmailtx's alone (the peers'
listeners: L{bench.peers.qmailtx}); the SMTP row runs on every peer.  Imports
L{bench.scenarios} late: that module adds these rows to its table.  Writes only the built
client.
"""

import shutil
import subprocess
from pathlib import Path

from bench.peers import RECIPIENT

KB = 1024
CLIENTS = 10
MESSAGES = 600
SOURCE = Path(__file__).with_name("pkgload.c")
#: Upper bound on one batch, so a stuck peer cannot hang the run.
BATCH_TIMEOUT = 600


def buildPkgload(buildDirectory):
    """
    Compile pkgload.c into C{buildDirectory} unless an up-to-date binary is there.

    @raise RuntimeError: no C compiler, or the build failed.
    """
    binary = Path(buildDirectory) / "pkgload"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler for bench/pkgload.c (run bench/setup.sh)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(SOURCE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building pkgload failed:\n{result.stderr}")
    return binary


def peerAddress(peer, proto):
    """Where C{peer} listens for C{proto}, or C{None} if it does not speak it."""
    if proto == "smtp":
        return peer.address
    port = getattr(peer, "packagePorts", {}).get(proto)
    return None if port is None else (peer.address[0], port)


def packageRate(proto):
    """
    @return: a measure of C{proto} messages accepted per second, one per connection.
    """
    def measure(peer, settings):
        from bench.scenarios import Sample

        address = peerAddress(peer, proto)
        if address is None:
            return Sample(None, 1, {"error": f"{peer.name} has no {proto} listener"})
        client = buildPkgload(Path(settings.client).parent)
        argv = [str(client), proto, address[0], str(address[1]), str(CLIENTS), str(MESSAGES),
                str(KB), RECIPIENT]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=BATCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            return Sample(0.0, MESSAGES, {"error": "batch timed out"})
        fields = dict(item.split("=", 1) for item in result.stdout.split())
        if result.returncode not in (0, 1) or "ok" not in fields:
            return Sample(0.0, MESSAGES, {"error": result.stderr.strip()
                                          or f"exit {result.returncode}"})
        ok, seconds = int(fields["ok"]), float(fields["seconds"])
        return Sample(ok / seconds if seconds > 0 else 0.0, int(fields["failed"]),
                      {"messages": MESSAGES, "accepted": ok, "seconds": seconds,
                       "clientErrors": result.stderr.strip()})
    return measure


def packageRows():
    """SMTP, QMQP and QMTP with one client and one message per connection."""
    from bench.scenarios import Scenario

    label = f"1 msg/conn {CLIENTS} clients  1 KB (pkgload)"
    return [
        Scenario(key="pkg-smtp-rate-1perconn-10c-1k", label=f"SMTP {label}", unit="msg/s",
                 measure=packageRate("smtp")),
        Scenario(key="pkg-qmqp-rate-1perconn-10c-1k", label=f"QMQP {label}", unit="msg/s",
                 measure=packageRate("qmqp"), only=("qmailtx",)),
        Scenario(key="pkg-qmtp-rate-1perconn-10c-1k", label=f"QMTP {label}", unit="msg/s",
                 measure=packageRate("qmtp"), only=("qmailtx",)),
    ]
