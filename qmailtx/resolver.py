"""
The system's DNS resolver for the remote channel, built on the daemon's reactor.

Reads C{/etc/hosts} and C{/etc/resolv.conf} (or the file C{QMAILTX_RESOLV_CONF} names);
writes nothing.  Must not import the queue, send, the servers or the SMTP/QMTP clients.
"""

RESOLV_CONF_VARIABLE = "QMAILTX_RESOLV_CONF"
"""Names a resolv.conf to use instead of /etc/resolv.conf (tests point it at loopback)."""


def systemResolver(reactor, resolvconf=None):
    """
    What C{twisted.names.client.createResolver} builds (hosts file, cache, resolv.conf
    servers), but on C{reactor}: its timers then live and die with the daemon's reactor.
    """
    from twisted.names import cache, client, hosts, resolve

    return resolve.ResolverChain([
        hosts.Resolver(file=b"/etc/hosts"),
        cache.CacheResolver(reactor=reactor),
        client.Resolver(resolv=resolvconf or "/etc/resolv.conf",
                        reactor=QuietDatagrams(reactor)),
    ])


class QuietDatagrams:
    """
    C{reactor} for C{client.Resolver}, except that the datagram protocols it listens with
    are not C{noisy}.  The resolver opens a UDP port per query (a fresh random source port,
    against spoofed answers) and each DNS protocol would log 'Starting protocol' and
    'Stopping protocol' around every lookup; its TCP factories are quiet already.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        protocol.noisy = False
        return self._reactor.listenUDP(port, protocol, interface, maxPacketSize)
