"""
Run the QMTP and QMQP servers behind the rules layer on a qmail root, in a child process,
for the service tests: C{python -m tests.service.packageservers ROOT QMTPRULES QMQPRULES}
prints C{qmtp PORT} and C{qmqp PORT} once listening on 127.0.0.1.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(root, qmtpRules, qmqpRules):
    from twisted.internet import reactor

    from qmailtx.control import ControlDir
    from qmailtx.qmqp import QMQPFactory
    from qmailtx.qmtp import QMTPFactory
    from qmailtx.queue import Queue
    from qmailtx.rules import RulesSource
    from qmailtx.tcpserver import RulesFactory

    queue = Queue(root, reactor)
    controls = ControlDir(os.path.join(root, "control"))
    for name, factoryClass, rules in (("qmtp", QMTPFactory, qmtpRules),
                                      ("qmqp", QMQPFactory, qmqpRules)):
        wrapped = RulesFactory(factoryClass(queue, controls, reactor=reactor), name,
                               rules=RulesSource(rules) if rules != "-" else None,
                               reactor=reactor)
        port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        wrapped.setPort(port)
        print(name, port.getHost().port, flush=True)
    reactor.run()


class PackageServers:
    """The child process; C{ports} maps C{qmtp}/C{qmqp} to their port."""

    def __init__(self, root, qmtpRules="-", qmqpRules="-"):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.log = open(str(root).rstrip("/") + ".packageservers.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.service.packageservers", str(root), qmtpRules,
             qmqpRules], stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=REPO)
        self.ports = {}
        for _ in range(2):
            line = self.process.stdout.readline().split()
            if not line:
                self.stop()
                raise RuntimeError("package servers did not start; see " + self.log.name)
            self.ports[line[0].decode()] = int(line[1])

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.log.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
