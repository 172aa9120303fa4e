"""
Remote delivery rate: qmailtx's remote channel and Postfix's SMTP client draining the same
messages to one Postfix C{smtp-sink} on 127.0.0.1, at concurrency 20, in one run.

C{python -m bench.remote [--messages N] [--rounds R] [--size BYTES]} (as root, for Postfix).

  - qmailtx: a child process runs L{qmailtx.remote.RemoteDeliverer} (the object the queue
    manager calls) with C{smtproutes} pointing at the sink, keeping C{concurrencyremote}
    = 20 deliveries in flight over N message files; rate = N / wall time.
  - Postfix: an isolated instance (L{bench.peers.postfix}) with C{relayhost} = the sink and
    a destination concurrency of 20, connection cache on (its defaults); N messages are put
    on hold through its smtpd, released with C{postsuper -H ALL} + C{postqueue -f}, and the
    rate is N / time until its queue is empty.
The queue manager is not in the qmailtx figure (send.py times belong to the drain row once it
exists); Postfix's includes qmgr.  Writes only in a temporary directory.
"""

import argparse
import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONCURRENCY = 20
SINK_BACKLOG = "256"


def startSink(port):
    return subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", SINK_BACKLOG],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def message(size, i):
    head = b"From: bench@bench.local\nTo: rcpt@sink.example\nSubject: remote %d\n\n" % i
    line = b"x" * 71 + b"\n"
    return head + line * max(1, (size - len(head)) // len(line))


def qmailtxChild(argv):
    """In the child: deliver every file of a directory at CONCURRENCY; print JSON."""
    directory, port, concurrency = argv[0], int(argv[1]), int(argv[2])
    from twisted.internet import defer, reactor

    from qmailtx.control import ControlDir
    from qmailtx.remote import RemoteDeliverer

    control = os.path.join(directory, "control")
    os.makedirs(control, exist_ok=True)
    Path(control, "me").write_bytes(b"bench.local\n")
    Path(control, "smtproutes").write_bytes(b":127.0.0.1:%d\n" % port)
    deliverer = RemoteDeliverer(ControlDir(control), reactor)
    files = sorted(str(p) for p in Path(directory, "mess").iterdir())
    outcome = {"ok": 0, "failed": 0, "texts": []}

    async def worker(queue):
        while queue:
            path = queue.pop()
            results = await deliverer.deliver(b"sink.example", b"bench@bench.local",
                                              [b"rcpt@sink.example"], path)
            if results[0].letter == b"K":
                outcome["ok"] += 1
            else:
                outcome["failed"] += 1
                if len(outcome["texts"]) < 3:
                    outcome["texts"].append(results[0].text.decode("utf-8", "replace"))

    def run():
        queue = list(files)
        start = time.monotonic()
        workers = [defer.ensureDeferred(worker(queue)) for _ in range(concurrency)]
        d = defer.gatherResults(workers)

        def done(_):
            outcome["seconds"] = time.monotonic() - start
            deliverer.stop()
            reactor.stop()
        d.addBoth(done)

    reactor.callWhenRunning(run)
    reactor.run()
    print(json.dumps(outcome))


def measureQmailtx(work, port, messages, size):
    directory = Path(work, "qmailtx")
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "mess").mkdir(parents=True)
    for i in range(messages):
        (directory / "mess" / str(i)).write_bytes(message(size, i))
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-m", "bench.remote", "--child", str(directory),
                          str(port), str(CONCURRENCY)], capture_output=True, cwd=repo,
                         env=dict(os.environ, PYTHONPATH=repo), check=True)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    result["rate"] = result["ok"] / result["seconds"]
    return result


def postfixRelay(work, sinkPort):
    from bench.peers.postfix import PostfixPeer

    class RelayingPostfix(PostfixPeer):
        name = "postfix-relay"

        def prepare(self, port):
            PostfixPeer.prepare(self, port)
            self._postconf("-e", f"relayhost=[127.0.0.1]:{sinkPort}",
                           f"default_destination_concurrency_limit={CONCURRENCY}",
                           f"smtp_destination_concurrency_limit={CONCURRENCY}",
                           "smtp_tls_security_level=none", "mydestination=",
                           "smtp_host_lookup=native")

    return RelayingPostfix(work, log=lambda *a: None)


def queueCount(spool):
    return sum(len(files) for sub in ("incoming", "active", "deferred", "maildrop", "hold")
               for _, _, files in os.walk(spool / sub))


def measurePostfix(peer, messages, size, timeout=600):
    with smtplib.SMTP(*peer.address) as client:
        for i in range(messages):
            client.sendmail("bench@bench.local", ["rcpt@sink.example"], message(size, i))
    deadline = time.monotonic() + 60
    while countHeld(peer) < messages and time.monotonic() < deadline:
        time.sleep(0.1)
    config = str(peer.config)
    start = time.monotonic()
    subprocess.run(["postsuper", "-c", config, "-H", "ALL"], check=True, capture_output=True)
    subprocess.run(["postqueue", "-c", config, "-f"], check=True, capture_output=True)
    while queueCount(peer.spool) and time.monotonic() - start < timeout:
        time.sleep(0.02)
    seconds = time.monotonic() - start
    left = queueCount(peer.spool)
    return {"ok": messages - left, "failed": left, "seconds": seconds,
            "rate": (messages - left) / seconds}


def countHeld(peer):
    return sum(len(files) for _, _, files in os.walk(peer.spool / "hold"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return qmailtxChild(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.remote")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--no-postfix", action="store_true")
    args = parser.parse_args(argv)
    from bench.peers import freePort

    work = Path(tempfile.mkdtemp(prefix="qmailtx-bench-remote-"))
    os.chmod(work, 0o755)
    sinkPort = freePort()
    sink = startSink(sinkPort)
    rows = {"qmailtx": [], "postfix": []}
    peer = None
    try:
        time.sleep(0.5)
        if not args.no_postfix:
            peer = postfixRelay(work, sinkPort)
            why = peer.missing()
            if why:
                sys.stderr.write(f"postfix skipped: {why}\n")
                peer = None
            else:
                peer.start()
        for r in range(args.rounds):
            rows["qmailtx"].append(measureQmailtx(work, sinkPort, args.messages, args.size))
            if peer is not None:
                rows["postfix"].append(measurePostfix(peer, args.messages, args.size))
            sys.stderr.write(f"round {r + 1}: " + ", ".join(
                f"{k} {v[-1]['rate']:.0f} msg/s" for k, v in rows.items() if v) + "\n")
    finally:
        if peer is not None:
            peer.stop()
        sink.terminate()
        sink.wait()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    medians = {k: sorted(x["rate"] for x in v)[len(v) // 2] for k, v in rows.items() if v}
    print(f"remote delivery to smtp-sink, {args.messages} x {args.size} B, "
          f"concurrency {CONCURRENCY}, median of {args.rounds}:")
    for name, rate in medians.items():
        print(f"  {name:8} {rate:8.0f} msg/s")
    if len(medians) == 2:
        ratio = medians["qmailtx"] / medians["postfix"]
        print(f"  qmailtx/postfix {ratio:.2f} ({'PASS' if ratio >= 1 else 'FAIL'}: target >= 1)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
