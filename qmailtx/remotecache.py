"""
Idle SMTP connections of the remote channel, kept a few seconds per destination so the next
message to the same place reuses one (the dialogue sends RSET before each further
transaction).

L{ConnectionCache} only holds connections a caller gave back and hands them out again; it
knows of a client nothing but C{connected}, C{born} and C{quit()}, and whether the caller's
C{suits} test accepts it (what the session promised, TLS or AUTH, is the caller's business).  Writes nothing on disk.
Must not import the SMTP dialogue, DNS, the queue, send or the servers.
"""

IDLE_SECONDS = 5
"""How long an idle SMTP connection is kept for a next message (Postfix keeps 2 s)."""
REUSE_SECONDS = 300
"""Age after which a connection is no longer reused (Postfix's reuse time limit)."""
IDLE_PER_DESTINATION = 40
"""Idle connections kept per destination: twice the default concurrencyremote."""


class ConnectionCache:
    """Idle SMTP connections by destination key, each dropped after L{IDLE_SECONDS}."""

    def __init__(self, clock):
        self._clock = clock
        self._idle = {}

    def take(self, key, suits=None):
        """
        The newest idle connection for C{key} that C{suits(client)} accepts (any, without
        C{suits}), or C{None}; those it refuses stay for a delivery they do suit.
        """
        clients = self._idle.get(key)
        if not clients:
            return None
        now = self._clock.seconds()
        for entry in reversed(clients[:]):
            client, timer, born = entry
            if client.connected and now - born < REUSE_SECONDS:
                if suits is not None and not suits(client):
                    continue
                clients.remove(entry)
                timer.cancel()
                return client
            clients.remove(entry)
            timer.cancel()
            client.quit()
        return None

    def give(self, key, client):
        clients = self._idle.setdefault(key, [])
        if not client.connected or len(clients) >= IDLE_PER_DESTINATION:
            client.quit()
            return
        born = getattr(client, "born", self._clock.seconds())
        entry = [client, None, born]
        entry[1] = self._clock.callLater(IDLE_SECONDS, self._expire, key, entry)
        clients.append(entry)

    def _expire(self, key, entry):
        clients = self._idle.get(key, [])
        if entry in clients:
            clients.remove(entry)
            entry[0].quit()
        if not clients:
            self._idle.pop(key, None)

    def closeAll(self):
        for clients in self._idle.values():
            for client, timer, _ in clients:
                timer.cancel()
                client.quit()
        self._idle.clear()
