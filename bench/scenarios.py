"""
The rows of the benchmark table: one L{Scenario} each, in L{SCENARIOS}, in table order.

A scenario is a function measuring one peer, returning a L{Sample}.  I{Repeated} scenarios
(rates) run once per round, interleaved with the other peers, and report the median; the others
(memory, connection counts) run once per peer on a freshly restarted server.  The speed and
memory targets of the issue live here and only here, never in timed unit tests.

Adding a row: write a measure function (or a factory of them) and append a L{Scenario}.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from bench.load import IdleConnections, sendBatch
from bench.memory import memoryOf
from bench.peers import RECIPIENT

KB = 1024
#: Pause before reading memory, so that the server has finished reacting to the last event.
SETTLE_SECONDS = 1.0


@dataclass
class Settings:
    """
    What one run measures with.

    @ivar client: path of the smtpload program.
    @ivar batchMessages: messages per batch, by message size (raised to fit the concurrency).
    @ivar sessionsPerClient: at least this many connections per client in every batch.
    @ivar idleConnections: connections held for the idle memory row.
    @ivar heldConnections: connections held for the simultaneous connections row.
    """
    client: str
    batchMessages: dict = field(default_factory=lambda: {KB: 600, 50 * KB: 300})
    sessionsPerClient: int = 2
    idleConnections: int = 2000
    heldConnections: int = 10000


@dataclass
class Sample:
    """
    One measurement of one peer: the value, the errors seen while taking it, and details for
    the JSON record.
    """
    value: Optional[float]
    errors: int = 0
    detail: dict = field(default_factory=dict)


@dataclass
class Scenario:
    """
    One row of the table.

    @ivar key: stable identifier for the JSON record.
    @ivar label: the row's text; C{{name}} fields are filled from the L{Settings}.
    @ivar measure: C{(peer, settings) -> Sample}.
    @ivar repeated: measured every round (True), or once on a fresh peer (False).
    @ivar only: names of the peers this row is for; empty means every peer.
    @ivar deletes: the row deletes many files (it delivers, or removes a directory per
        sample).  Such rows run in rounds of their own after every other row: on ext4
        without a journal an inode freed in the last minute is skipped, checked one by one,
        by every later allocation in its block group, so a row right after a mass deletion
        measures that scan (twice as slow for qmailtx, which allocates three files per
        message, as Postfix's one).
    @ivar target: C{(medians, errors) -> (passed, text)}, both dicts keyed by peer name;
        C{passed} is C{None} when the row could not be judged.
    """
    key: str
    label: str
    unit: str
    measure: Callable
    higherIsBetter: bool = True
    repeated: bool = True
    only: tuple = ()
    target: Optional[Callable] = None
    deletes: bool = False


def batchSize(settings, clients, perConnection, size):
    """
    Messages in one batch: the configured number, raised so that every client makes
    C{settings.sessionsPerClient} connections, rounded up to whole rounds of connections.
    """
    unit = clients * perConnection
    wanted = max(settings.batchMessages[size], unit * settings.sessionsPerClient)
    return -(-wanted // unit) * unit


def smtpRate(clients, perConnection, size):
    """
    @return: a measure of messages accepted per second, over one batch.
    """
    def measure(peer, settings):
        messages = batchSize(settings, clients, perConnection, size)
        batch = sendBatch(settings.client, peer.address, clients, messages, perConnection,
                          size, RECIPIENT)
        return Sample(batch.rate, batch.failed,
                      {"messages": messages, "accepted": batch.accepted,
                       "seconds": batch.seconds, "clientErrors": batch.errors})
    return measure


def holdIdle(count, settings, peer):
    """
    Hold C{count} idle connections to C{peer} and read its memory before and while it has them.

    @return: C{(held, errors, detail)}.
    """
    before = memoryOf(peer.pids())
    connections = IdleConnections().open(peer.address, count)
    time.sleep(SETTLE_SECONDS)
    after = memoryOf(peer.pids())
    held = connections.stillOpen()
    opened = len(connections.sockets) or 1
    connections.close()
    detail = {"wanted": count, "held": held, "errors": connections.errors,
              "before": before, "after": after,
              "pssKiBPerConnection": (after["pssKiB"] - before["pssKiB"]) / opened,
              "rssKiBPerConnection": (after["rssKiB"] - before["rssKiB"]) / opened}
    return held, connections.errorCount, detail


def idleMemory(peer, settings):
    """
    Proportional memory (PSS) the server's processes gain per idle connection.
    """
    time.sleep(SETTLE_SECONDS)
    _, errors, detail = holdIdle(settings.idleConnections, settings, peer)
    return Sample(detail["pssKiBPerConnection"], errors, detail)


def heldConnections(peer, settings):
    """
    Simultaneous connections held, each having received its greeting.
    """
    held, errors, detail = holdIdle(settings.heldConnections, settings, peer)
    return Sample(held, errors, detail)


def fasterBy(factor):
    """
    Target: qmailtx's rate is at least C{factor} times every other measured peer's.
    """
    def judge(medians, errors):
        mine = medians.get("qmailtx")
        others = {k: v for k, v in medians.items() if k != "qmailtx" and v}
        if not mine or not others:
            return None, f">= {factor}x others: not measured"
        passed = all(mine >= factor * v for v in others.values()) and not errors.get("qmailtx")
        return passed, f">= {factor}x others"
    return judge


def atMost(limit, unit):
    """
    Target: qmailtx's value is below C{limit}.
    """
    def judge(medians, errors):
        mine = medians.get("qmailtx")
        if mine is None:
            return None, f"< {limit} {unit}: not measured"
        return mine < limit and not errors.get("qmailtx"), f"< {limit} {unit}"
    return judge


def allHeld(medians, errors):
    """
    Target: qmailtx held every connection, without a single error.
    """
    mine = medians.get("qmailtx")
    if mine is None:
        return None, "all held: not measured"
    return errors.get("qmailtx") == 0 and mine > 0, "all held, 0 errors"


def rateRows():
    rows = []
    for perConnection in (1, 10):
        for size in (KB, 50 * KB):
            for clients in (1, 10, 50):
                target = fasterBy(1.5) if (clients, size) == (10, KB) else None
                rows.append(Scenario(
                    key=f"smtp-rate-{perConnection}perconn-{clients}c-{size // KB}k",
                    label=f"SMTP {perConnection:>2} msg/conn {clients:>2} clients "
                          f"{size // KB:>2} KB",
                    unit="msg/s", measure=smtpRate(clients, perConnection, size),
                    target=target))
    return rows


SCENARIOS = rateRows() + [
    Scenario(key="smtp-idle-memory", label="SMTP {idleConnections} idle connections, memory", unit="KiB/conn",
             measure=idleMemory, higherIsBetter=False, repeated=False,
             target=atMost(3, "KiB/conn")),
    Scenario(key="smtp-held-connections", label="SMTP {heldConnections} simultaneous connections",
             unit="conns", measure=heldConnections, repeated=False, only=("qmailtx",),
             target=allHeld),
]

from bench.tls import tlsRows  # noqa: E402 (bench.tls builds on the classes above)

SCENARIOS += tlsRows()

from bench.remote import remoteRows  # noqa: E402 (bench.remote builds on the classes above)

SCENARIOS += remoteRows()

from bench.packages import packageRows  # noqa: E402 (bench.packages builds on the classes above)

SCENARIOS += packageRows()
