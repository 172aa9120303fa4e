"""
C{twistd qmail --nullclient}: the options put every mail listener in front of the QMQP
null-client queue, and without the flag they keep the local queue.
"""

from twisted.internet.testing import MemoryReactorClock

from qmailtx.nullclient import QmqpQueue
from qmailtx.queue import Queue
from qmailtx.service import makeQmailService
from qmailtx.tap import Options


def build(tmp_path, *words):
    options = Options()
    options.parseOptions(["--root", str(tmp_path / "root"), "--smtp", "tcp:0",
                          "--qmtp", "tcp:0", "--qmqp", "tcp:0", *words])
    top = makeQmailService(options, reactor=MemoryReactorClock())
    listeners = [s for s in top if hasattr(s, "factory")]
    return top.site, {s.kind: s.factory.wrappedFactory.queue for s in listeners}


def test_nullclientListenersUseQmqp(tmp_path):
    """--nullclient --qmqpport N: SMTP, QMTP and QMQP hand messages to QMQP servers on
    port N; qmail-send keeps the local queue (for its bounces)."""
    site, queues = build(tmp_path, "--nullclient", "--qmqpport", "6628")
    assert isinstance(site.listenerQueue.watchedQueue, QmqpQueue)
    assert site.listenerQueue.port == 6628
    assert queues == {"smtp": site.listenerQueue, "qmtp": site.listenerQueue,
                      "qmqp": site.listenerQueue}
    assert isinstance(site.queue, Queue)


def test_defaultListenersUseLocalQueue(tmp_path):
    """Without --nullclient every listener queues locally."""
    site, queues = build(tmp_path)
    assert set(map(id, queues.values())) == {id(site.listenerQueue)}
    assert site.listenerQueue.watchedQueue is site.queue
