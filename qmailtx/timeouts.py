"""
Idle timeouts for many connections at the cost of one timer.

qmail's servers time out each read (timeoutsmtpd and friends).  A DelayedCall per
connection, reset on every packet, costs hundreds of bytes and a heap operation per read;
thousands of idle connections are the common case for a mail server, so instead each
connection records when it was last active and sits in a one-second bucket; one looping
call per listener checks the due bucket and re-files whoever was active since.
"""

import math


class IdleTimeouts:
    """
    Watches objects with a C{lastActivity} float, a C{timeout} (seconds) and an
    C{idleTimedOut()} method.
    """

    def __init__(self, clock):
        self._clock = clock
        self._buckets = {}
        self._call = None
        self._callAt = None

    def watch(self, conn):
        self._file(conn, conn.lastActivity + conn.timeout)

    def _file(self, conn, deadline):
        second = math.ceil(deadline)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
        bucket.add(conn)
        conn._idleBucket = second
        if self._call is None or second < self._callAt:
            self._schedule(second)

    def _schedule(self, second):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._callAt = second
        self._call = self._clock.callLater(max(0, second - self._clock.seconds()), self._tick)

    def forget(self, conn):
        bucket = self._buckets.get(getattr(conn, "_idleBucket", None))
        if bucket is not None:
            bucket.discard(conn)

    def watched(self):
        """Every connection watched now (a list: the caller may make them forget)."""
        return [conn for bucket in self._buckets.values() for conn in bucket]

    def _tick(self):
        self._call = None
        self._callAt = None
        now = self._clock.seconds()
        for second in sorted(s for s in self._buckets if s <= now):
            for conn in self._buckets.pop(second):
                deadline = conn.lastActivity + conn.timeout
                if deadline <= now:
                    conn._idleBucket = None
                    conn.idleTimedOut()
                else:
                    self._file(conn, deadline)
        if self._buckets and self._call is None:
            self._schedule(min(self._buckets))

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
