"""
End-to-end delivery row: C{python -m bench.delivery} (as root).

Messages per second from the first SMTP byte to the last message in its maildir: 2,000 ×
1 KB from 10 smtpload clients, one connection per message, to qmailtx (queue, qmail-send,
lspawn, a delivery worker as the mailbox owner, maildir) and to Postfix (smtpd, cleanup,
qmgr, virtual(8) into a Maildir), started side by side in one run and measured in
alternating rounds.  Both fsync queue files and maildir files before they count.  Mailboxes
belong to C{nobody}, so neither server delivers as root.  Target from issue 3: qmailtx at
least 1.5× Postfix.  Writes only below its temporary work directory.

Both run the same number of simultaneous local deliveries, C{--concurrency} (default 20):
qmailtx's C{concurrencylocal} and Postfix's C{virtual_destination_concurrency_limit}.  Each
server's default differs (qmail's 10, Postfix's 20), and a row comparing the pipelines should
not also compare those defaults; 20 is Postfix's.  Measured on the 2-CPU machine, 10 or 20
moved each server's rate by no more than the run-to-run noise (about ±15%).

Before the rounds each server delivers C{--warmup} messages unmeasured, so the first round
does not time process start-up (Postfix's virtual(8) processes, qmailtx's delivery workers)
and the second a warm one.
"""

import argparse
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.load import buildClient, sendBatch
from bench.peers import BENCH_DOMAIN, RECIPIENT, PeerUnavailable, raiseFileLimit
from bench.peers.postfix import PostfixPeer
from bench.peers.qmailtx import QmailtxPeer

RESULTS = Path(__file__).with_name("results")
DELIVERY_TIMEOUT = 600
MAILBOX_USER = "nobody"


def owner():
    entry = pwd.getpwnam(MAILBOX_USER)
    return entry.pw_uid, entry.pw_gid


def chownTree(top, uid, gid):
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.chown(top, uid, gid)


DEFAULT_CONCURRENCY = 20
"""Simultaneous local deliveries on both servers (Postfix's default; qmail's is 10)."""


class QmailtxDelivery(QmailtxPeer):
    """qmailtx delivering bench.local (a local domain) to the alias maildir, owned by nobody."""

    description = "twistd -n qmail: queue, qmail-send, lspawn, deliverworker (nobody), Maildir"
    concurrency = DEFAULT_CONCURRENCY

    def prepare(self, port):
        QmailtxPeer.prepare(self, port)
        control = self.directory / "root" / "control"
        # The queue-only peer holds both channels at concurrency 0; this row delivers.
        (control / "concurrencylocal").write_text(f"{self.concurrency}\n")
        (control / "concurrencyremote").write_text("20\n")
        alias = self.directory / "root" / "alias"
        (alias / ".qmail-default").write_bytes(b"./Maildir/\n")
        chownTree(alias, *owner())

    def mailbox(self):
        return self.directory / "root" / "alias" / "Maildir" / "new"


class PostfixDelivery(PostfixPeer):
    """Postfix delivering bench.local through virtual(8) to one Maildir owned by nobody."""

    description = "Postfix: smtpd, cleanup, qmgr, virtual(8) to a Maildir (nobody)"
    concurrency = DEFAULT_CONCURRENCY

    def prepare(self, port):
        PostfixPeer.prepare(self, port)
        mail = self.directory / "mail"
        mail.mkdir()
        uid, gid = owner()
        os.chown(mail, uid, gid)
        self._postconf("-e", "smtpd_data_restrictions=", "mydestination=",
                       f"virtual_mailbox_domains={BENCH_DOMAIN}",
                       f"virtual_mailbox_base={mail}", "virtual_mailbox_maps=static:box/",
                       f"virtual_uid_maps=static:{uid}", f"virtual_gid_maps=static:{gid}",
                       "virtual_minimum_uid=1",
                       f"virtual_destination_concurrency_limit={self.concurrency}")

    def mailbox(self):
        return self.directory / "mail" / "box" / "new"


def delivered(peer):
    try:
        return len(os.listdir(peer.mailbox()))
    except FileNotFoundError:
        return 0


def measure(peer, client, messages, clients, size=1024):
    """One batch: C{(rate, accepted, failed, seconds)} from first byte to last delivery."""
    before = delivered(peer)
    start = time.monotonic()
    batch = sendBatch(client, peer.address, clients, messages, 1, size, RECIPIENT)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while delivered(peer) < before + batch.accepted and time.monotonic() < deadline:
        time.sleep(0.005)
    seconds = time.monotonic() - start
    got = delivered(peer) - before
    return got / seconds, batch.accepted, batch.failed + (batch.accepted - got), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.delivery",
                                     description="end-to-end SMTP-to-maildir rate")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200,
                        help="messages each server delivers before the measured rounds")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="simultaneous local deliveries on both servers")
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.delivery: needs root (Postfix, and mailboxes owned by nobody)\n")
        return 1
    raiseFileLimit()
    client = buildClient(RESULTS / ".build")
    work = Path(tempfile.mkdtemp(prefix="qmailtx-delivery-", dir=args.workdir))
    os.chmod(work, 0o755)
    peers = [QmailtxDelivery(work), PostfixDelivery(work)]
    for peer in peers:
        peer.concurrency = args.concurrency
    rates = {p.name: [] for p in peers}
    errors = {p.name: 0 for p in peers}
    started = []
    try:
        for peer in peers:
            why = peer.missing()
            if why:
                print(f"{peer.name}: skipped ({why})")
                continue
            try:
                peer.start()
            except PeerUnavailable as e:
                print(f"{peer.name}: skipped ({e})")
                continue
            started.append(peer)
        for peer in started:
            if args.warmup:
                measure(peer, client, args.warmup, args.clients)
        for n in range(args.rounds):
            order = started[n % len(started):] + started[:n % len(started)] if started else []
            for peer in order:
                rate, ok, failed, seconds = measure(peer, client, args.messages, args.clients)
                rates[peer.name].append(rate)
                errors[peer.name] += failed
                print(f"round {n + 1} {peer.name:8} {rate:7.1f} msg/s  ({ok} accepted, "
                      f"{failed} not delivered, {seconds:.1f} s)", flush=True)
    finally:
        for peer in started:
            peer.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    label = (f"Delivery {args.messages} x 1 KB, {args.clients} clients, concurrency "
             f"{args.concurrency}, SMTP to Maildir")
    print(f"\n{label}: " + "  ".join(f"{k} {v:.1f} msg/s" + ("!" if errors[k] else "")
                                      for k, v in medians.items()))
    if "qmailtx" in medians and medians.get("postfix"):
        ratio = medians["qmailtx"] / medians["postfix"]
        verdict = "PASS" if ratio >= 1.5 and not errors["qmailtx"] else "FAIL"
        print(f"qmailtx/postfix = {ratio:.2f} (target >= 1.5: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
