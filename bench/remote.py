"""
The remote delivery row of the benchmark (issue 4): messages per second relayed through the
whole daemon to one Postfix C{smtp-sink} on 127.0.0.1, qmailtx beside Postfix in one run.

Each sample starts a relaying instance of the peer on a clean directory (outside the timing),
injects N x 1 KB messages for C{sink.example} over SMTP with smtpload, and measures from the
first injected byte until the peer's queue is empty; the rate counts only the deliveries the
peer itself logged as accepted by the sink.

  - qmailtx: C{twistd qmail} (queue, qmail-send, the remote channel) with C{control/smtproutes}
    sending C{sink.example} to the sink and C{concurrencyremote} = 20.
  - Postfix: smtpd, cleanup, qmgr and smtp(8) with C{relayhost} = the sink, destination
    concurrency 20, its connection cache on for that destination (and on demand, its default).
Both fsync each queue file before the 250 and delete it after the sink's 250.

C{python -m bench.remote [bench options]} runs only this row (as root, for Postfix).
The sink is started on first use and stopped when the process exits.  Writes only in the
run's work directory.
"""

import atexit
import os
import re
import subprocess
import sys
import time

from bench.load import sendBatch
from bench.peers import countFiles, freePort
from bench.peers.postfix import PostfixPeer
from bench.peers.qmailtx import QmailtxPeer

KB = 1024
CONCURRENCY = 20
"""concurrencyremote, and Postfix's destination concurrency: the issue's setting."""
SINK_DOMAIN = "sink.example"
SINK_RECIPIENT = "rcpt@" + SINK_DOMAIN
SINK_BACKLOG = "256"
INJECT_CLIENTS = 10
PER_CONNECTION = 10
"""Messages per injecting connection: few enough handshakes that delivery, not SMTP
acceptance, is what the row mostly weighs."""
MESSAGES_PER_BATCH_MESSAGE = 4
"""The row relays this many times the run's 1 KB batch (2,400 by default, 400 with --quick)."""
DRAIN_TIMEOUT = 600
POLL_SECONDS = 0.005


class Sink:
    """One C{smtp-sink} for the whole run, so every peer relays to the same program."""

    process = None
    port = None

    @classmethod
    def address(cls):
        if cls.process is None or cls.process.poll() is not None:
            cls.port = freePort()
            argv = ["smtp-sink", f"127.0.0.1:{cls.port}", SINK_BACKLOG]
            if os.geteuid() == 0:
                argv[1:1] = ["-u", "nobody"]
            cls.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
            atexit.register(cls.stop)
            time.sleep(0.3)
            if cls.process.poll() is not None:
                raise RuntimeError("smtp-sink did not start (is postfix installed?)")
        return ("127.0.0.1", cls.port)

    @classmethod
    def stop(cls):
        if cls.process is not None and cls.process.poll() is None:
            cls.process.terminate()
            cls.process.wait()
        cls.process = None


class QmailtxRelay(QmailtxPeer):
    """qmailtx relaying C{sink.example} to the sink through smtproutes."""

    name = "qmailtx-relay"
    description = "twistd -n qmail: queue, qmail-send, remote channel (smtproutes to smtp-sink)"

    def __init__(self, workdir, sink, log=print):
        QmailtxPeer.__init__(self, workdir, log)
        self.sink = sink

    def prepare(self, port):
        QmailtxPeer.prepare(self, port)
        control = self.directory / "root" / "control"
        (control / "concurrencyremote").write_text(f"{CONCURRENCY}\n")
        (control / "concurrencylocal").write_text("10\n")
        (control / "smtproutes").write_text(f"{SINK_DOMAIN}:{self.sink[0]}:{self.sink[1]}\n")
        with open(control / "rcpthosts", "a") as f:
            f.write(SINK_DOMAIN + "\n")

    def queued(self):
        return countFiles(self.directory / "root" / "queue" / "mess")

    def delivered(self):
        """Deliveries qmail-send logged as successes (read after L{stop}, when logs are flushed)."""
        log = (self.directory / "server.out").read_bytes()
        return len(re.findall(rb"delivery \d+: success", log))


class PostfixRelay(PostfixPeer):
    """Postfix relaying everything to the sink (C{relayhost}), nothing on hold."""

    name = "postfix-relay"
    description = "Postfix: smtpd, cleanup, qmgr, smtp(8) to smtp-sink, connection cache on"

    def __init__(self, workdir, sink, log=print):
        PostfixPeer.__init__(self, workdir, log)
        self.sink = sink

    def prepare(self, port):
        PostfixPeer.prepare(self, port)
        relayhost = f"[{self.sink[0]}]:{self.sink[1]}"
        self._postconf("-e", "smtpd_data_restrictions=", f"relayhost={relayhost}",
                       f"default_destination_concurrency_limit={CONCURRENCY}",
                       f"smtp_destination_concurrency_limit={CONCURRENCY}",
                       f"smtp_connection_cache_destinations={relayhost}",
                       "smtp_connection_cache_on_demand=yes",
                       "smtp_tls_security_level=none")

    def queued(self):
        return sum(countFiles(self.spool / sub)
                   for sub in ("maildrop", "incoming", "active", "deferred", "hold"))

    def delivered(self):
        log = (self.directory / "maillog").read_bytes()
        return len(re.findall(rb" status=sent ", log))


RELAYS = {"qmailtx": QmailtxRelay, "postfix": PostfixRelay}


def remoteRate(peer, settings):
    """
    Messages per second from the first injected byte until the relay's queue is empty, over
    the deliveries the relay logged as accepted by the sink.
    """
    from bench.scenarios import Sample

    messages = MESSAGES_PER_BATCH_MESSAGE * settings.batchMessages[KB]
    messages -= messages % PER_CONNECTION
    relay = RELAYS[peer.name](peer.workdir, Sink.address(), log=peer.log)
    relay.start()
    try:
        start = time.monotonic()
        batch = sendBatch(settings.client, relay.address, INJECT_CLIENTS, messages,
                          PER_CONNECTION, KB, SINK_RECIPIENT)
        injected = time.monotonic() - start
        deadline = start + DRAIN_TIMEOUT
        while relay.queued() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        seconds = time.monotonic() - start
        left = relay.queued()
    finally:
        relay.stop()
    delivered = relay.delivered()
    errors = batch.failed + left + abs(batch.accepted - delivered)
    return Sample(delivered / seconds, errors,
                  {"messages": messages, "injected": batch.accepted, "delivered": delivered,
                   "leftInQueue": left, "seconds": seconds, "injectSeconds": injected,
                   "clientErrors": batch.errors})


def remoteRows():
    """The remote delivery row, judged against Postfix: at least its rate."""
    from bench.scenarios import Scenario, fasterBy

    return [Scenario(
        key="remote-relay-20c-1k",
        label=f"Remote relay to smtp-sink, concurrency {CONCURRENCY}, 1 KB",
        unit="msg/s", measure=remoteRate, only=tuple(RELAYS), target=fasterBy(1.0),
        deletes=True)]


def main(argv=None):
    from bench.run import main as runBench

    argv = sys.argv[1:] if argv is None else argv
    return runBench(["--scenarios", "remote-relay", "--peers", "qmailtx,postfix", *argv])


if __name__ == "__main__":
    sys.exit(main())
