"""
qmailtx under C{twistd -n qmail}, from this checkout.

The root comes from C{qmailtx init ROOT --me bench.local}, whose control/rcpthosts already
lists bench.local, so the bench's recipient is accepted without relaying.  Accepted messages
stay in ROOT/queue, deliveries held.  Writes only below its peer directory.
"""

import os
import subprocess
import sys
from pathlib import Path

from bench.peers import BENCH_DOMAIN, Peer, countFiles, freePort, registerPeer

CHECKOUT = Path(__file__).resolve().parents[2]
#: tcpserver -c for the listener: above the 10,000 simultaneous connections the bench holds.
MAX_CONNECTIONS = 20000
#: listen(2) backlog; the kernel caps it at net.core.somaxconn.
BACKLOG = 1024
#: twistd qmail --receivers: session processes beside the daemon (one less than the cores is
#: the advice of README.md); QMAILTX_BENCH_RECEIVERS=0 measures the single-process daemon.
RECEIVERS = int(os.environ.get("QMAILTX_BENCH_RECEIVERS", max(1, (os.cpu_count() or 2) - 1)))
#: QMAILTX_BENCH_LOGGER=stamped: twistd's timestamped lines by qmailtx.log.stamped;
#: =multilog (or QMAILTX_BENCH_MULTILOG=1): bare qmail lines, as under a supervisor's multilog;
#: default none: twistd -n qmail picks qmailtx.log.stamped itself.
LOGGER = os.environ.get("QMAILTX_BENCH_LOGGER", "") or (
    "multilog" if os.environ.get("QMAILTX_BENCH_MULTILOG", "") not in ("", "0") else "")
if LOGGER not in ("", "stamped", "multilog"):
    raise SystemExit(f"QMAILTX_BENCH_LOGGER: unknown logger {LOGGER!r}")
LOGGER_ARGS = ["--logger", f"qmailtx.log.{LOGGER}"] if LOGGER else []


@registerPeer
class QmailtxPeer(Peer):
    name = "qmailtx"
    description = (f"twistd -n{''.join(' ' + a for a in LOGGER_ARGS)} qmail "
                   f"--receivers {RECEIVERS} (this checkout), queue only")

    def missing(self):
        if not (CHECKOUT / "twisted" / "plugins" / "qmailtx_plugin.py").exists():
            return f"no qmailtx twistd plugin in {CHECKOUT}"
        return None

    def version(self):
        try:
            return subprocess.run(["git", "-C", str(CHECKOUT), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    def _env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        return env

    def prepare(self, port):
        root = self.directory / "root"
        # QMTP and QMQP listeners for bench.packages' rows (idle in every other row).
        self.packagePorts = {"qmtp": freePort(), "qmqp": freePort()}
        subprocess.run([sys.executable, "-c", "from qmailtx.scripts.main import run; run()",
                        "init", str(root), "--me", BENCH_DOMAIN],
                       env=self._env(), check=True, capture_output=True)
        # Postfix holds every accepted message; the like here is qmail's hold, concurrency 0
        # on both channels: the queue manager still preprocesses todo/ (its share of the
        # work, as Postfix's cleanup does its own) but delivers nothing.
        for name in ("concurrencylocal", "concurrencyremote"):
            (root / "control" / name).write_text("0\n")
        rcpthosts = root / "control" / "rcpthosts"
        if BENCH_DOMAIN not in rcpthosts.read_text().split():
            with open(rcpthosts, "a") as f:
                f.write(BENCH_DOMAIN + "\n")

    def command(self, port):
        logger = LOGGER_ARGS
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", *logger, "qmail", "--root", str(self.directory / "root"),
                "--smtp", f"tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}",
                "--maxconn", f"smtp={MAX_CONNECTIONS}", "--receivers", str(RECEIVERS)]
        for proto, packagePort in self.packagePorts.items():
            argv += [f"--{proto}", f"tcp:{packagePort}:interface=127.0.0.1:backlog={BACKLOG}"]
        return argv, self._env()

    def storedCount(self):
        return countFiles(self.directory / "root" / "queue" / "mess")
