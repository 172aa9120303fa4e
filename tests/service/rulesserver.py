"""
A real listener behind L{qmailtx.tcpserver.RulesFactory}, for the live tests: each admitted
client is sent its environment and what the socket looks like, then the connection stays
open until the client closes it.

Run as C{python -m tests.service.rulesserver RULES MAXCONN MAXPERIP}; prints the port.
"""

import socket
import sys

from twisted.internet import endpoints, protocol, reactor

from qmailtx.rules import RulesSource
from qmailtx.tcpserver import RulesFactory


class ShowEnv(protocol.Protocol):
    def connectionMade(self):
        sock = self.transport.getHandle()
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        lines = [f"{k}={v}" for k, v in sorted(self.env.items())]
        lines.append(f"nodelay={int(bool(nodelay))}")
        lines.append(f"direct={int(self.transport.protocol is self)}")
        self.transport.write(("\n".join(lines) + "\n.\n").encode())

    def dataReceived(self, data):
        self.transport.write(data)


class ShowEnvFactory(protocol.ServerFactory):
    protocol = ShowEnv
    busyReply = b"421 too many connections from your address (#4.3.2)\r\n"


def main(argv):
    rulesPath, maxConn, maxPerIP = argv[1], int(argv[2]), int(argv[3])
    factory = RulesFactory(
        ShowEnvFactory(),
        "test",
        rules=RulesSource(rulesPath) if rulesPath != "-" else None,
        maxConnections=maxConn,
        maxPerIP=maxPerIP,
        reactor=reactor,
    )

    def listening(port):
        factory.setPort(port)
        print(port.getHost().port, flush=True)

    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, backlog=20, interface="127.0.0.1")
    endpoint.listen(factory).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
