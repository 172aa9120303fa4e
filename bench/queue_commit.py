"""
Throughput of the in-process queue: begin / write(1 KB) / commit, C{concurrency} at once,
on the real reactor and its thread pool.  Usage: python bench/queue_commit.py [N] [CONC] [DIR]
"""

import os
import sys
import tempfile
import time

from twisted.internet import defer, task

from qmailtx.queue import Queue, createLayout


def main(reactor, n=2000, concurrency=10, base=None):
    root = tempfile.mkdtemp(dir=base)
    createLayout(os.path.join(root, "queue"))
    q = Queue(root, reactor)
    batches = []
    real = q._flush
    q._flush = lambda ws, todoLinks: batches.append(len(ws)) or real(ws, todoLinks)
    body = b"x" * 1023 + b"\n"
    left = [n]

    @defer.inlineCallbacks
    def client():
        while left[0] > 0:
            left[0] -= 1
            w = q.begin(b"from network")
            w.write(body)
            yield w.commit(b"a@example.com", [b"b@example.org"])

    start = time.perf_counter()
    yield defer.gatherResults([client() for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    print(f"{n} msgs, {concurrency} concurrent: {n / elapsed:.0f} msgs/s, "
          f"{len(batches)} flushes (mean {n / len(batches):.1f} new messages per flush)")

    start = time.perf_counter()
    for _ in range(min(n, 300)):
        w = q.begin(b"by uid 0")
        w.write(body)
        w.commitSync(b"a@example.com", [b"b@example.org"])
    elapsed = time.perf_counter() - start
    print(f"commitSync one at a time: {min(n, 300) / elapsed:.0f} msgs/s")


if __name__ == "__main__":
    args = sys.argv[1:]
    task.react(main, [int(args[0]) if args else 2000, int(args[1]) if len(args) > 1 else 10,
                      args[2] if len(args) > 2 else None])
