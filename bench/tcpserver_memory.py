"""
Memory one idle connection costs behind L{qmailtx.tcpserver.RulesFactory}, measured with
tracemalloc against a plain factory, so the rules layer's own share is visible.

Usage: C{python bench/tcpserver_memory.py [N]}.  Each variant runs in its own process (a
reactor starts once); a child process opens N connections to 127.0.0.1 and holds them.
"""

import os
import subprocess
import sys
import tempfile
import tracemalloc

HOLD = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    socks.append(socket.create_connection(("127.0.0.1", port)))
sys.stdout.write("ok\\n"); sys.stdout.flush()
sys.stdin.read()
"""


def measure(variant, n):
    from twisted.internet import protocol, reactor
    from twisted.logger import globalLogBeginner

    # Log lines go nowhere, so the logger's start-up buffer does not count as our memory.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)

    from qmailtx.rules import RulesSource
    from qmailtx.tcpserver import RulesFactory

    class Idle(protocol.Protocol):
        pass

    class Counting(protocol.ServerFactory):
        protocol = Idle
        made = 0

        def buildProtocol(self, addr):
            Counting.made += 1
            return protocol.ServerFactory.buildProtocol(self, addr)

    inner = Counting()
    if variant == "plain":
        factory = inner
    else:
        rules = None
        if variant == "rules":
            f = tempfile.NamedTemporaryFile(suffix=".rules", delete=False)
            f.write(b'127.:allow,RELAYCLIENT=""\n:deny\n')
            f.close()
            rules = RulesSource(f.name)
        factory = RulesFactory(inner, "bench", rules=rules, maxConnections=n + 10,
                               maxPerIP=(n + 10 if variant == "rules" else 0),
                               reactor=reactor)
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    if factory is not inner:
        factory.setPort(port)
    for _ in range(3):
        reactor.iterate(0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(port.getHost().port), str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    while Counting.made < n:
        reactor.iterate(0.01)
    for _ in range(3):
        reactor.iterate(0)
    after = tracemalloc.take_snapshot()
    child.stdin.close()
    child.wait()
    if os.environ.get("BENCH_DETAIL"):
        for stat in after.compare_to(before, "lineno")[:12]:
            print(stat, file=sys.stderr)
    diff = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return diff / n


def main(argv):
    n = int(argv[1]) if len(argv) > 1 and not argv[1].startswith("-") else 500
    if len(argv) > 2 and argv[2].startswith("--variant="):
        print(measure(argv[2].split("=", 1)[1], n))
        return 0
    results = {}
    for variant in ("plain", "wrapped", "rules"):
        out = subprocess.run([sys.executable, argv[0], str(n), "--variant=" + variant],
                             capture_output=True, text=True, check=True).stdout
        results[variant] = float(out.split()[-1])
    for variant, perConn in results.items():
        extra = perConn - results["plain"]
        print(f"{variant:8s} {perConn:8.0f} bytes/connection  (+{extra:.0f} over plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
