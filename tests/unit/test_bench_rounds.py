"""
bench.run measures the rows that delete many files in rounds of their own, after every
round of the other rows:
on ext4 without a journal a row measured just after a mass deletion measures the inode
allocator's walk over the freed inodes instead of the server.
"""

from types import SimpleNamespace

from bench.run import runAllRounds
from bench.scenarios import Sample, Scenario


def test_deletingRowsComeLast(monkeypatch):
    """Over three rounds, every sample of a creating row precedes every deleting one."""
    monkeypatch.setattr("bench.run.say", lambda text: None)
    taken = []

    def rowOf(key, deletes):
        def measure(peer, settings):
            taken.append((key, peer.name))
            return Sample(1.0, 0, {})
        return Scenario(key=key, label=key, unit="msg/s", measure=measure, deletes=deletes)

    rows = [rowOf("smtp-a", False), rowOf("relay", True), rowOf("smtp-b", False)]
    peers = [SimpleNamespace(name="qmailtx"), SimpleNamespace(name="postfix")]
    samples = {row.key: {} for row in rows}
    runAllRounds(rows, peers, None, 3, samples)

    keys = [key for key, _ in taken]
    assert len(keys) == 18
    assert set(keys[:12]) == {"smtp-a", "smtp-b"}
    assert set(keys[12:]) == {"relay"}
    assert all(len(byPeer) == 2 and all(len(v) == 3 for v in byPeer.values())
               for byPeer in samples.values())
