"""Fakes shared by the QMTP and QMQP protocol tests: a queue with the Queue writer API."""

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport


NOW = 1732217160
"""21 Nov 2024 19:26:00 UTC."""


class FakeWriter:
    def __init__(self, queue, qp):
        self.queue = queue
        self.qp = qp
        self.chunks = []
        self.state = "open"
        self.producer = None

    @property
    def data(self):
        return b"".join(self.chunks)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def write(self, data):
        assert self.state == "open", self.state
        assert isinstance(data, bytes)
        self.chunks.append(data)

    def commit(self, sender, recipients):
        assert self.state == "open", self.state
        self.state = "committing"
        self.sender, self.recipients = sender, list(recipients)
        result = self.queue.results.pop(0) if self.queue.results else None
        if isinstance(result, defer.Deferred):
            d = result
        elif isinstance(result, Exception):
            d = defer.fail(result)
        else:
            d = defer.succeed(4242)

        def done(r):
            self.state = "committed"
            self.queue.committed.append(self)
            return r

        def failed(f):
            self.state = "failed"
            return f

        return d.addCallbacks(done, failed)

    def abort(self):
        assert self.state == "open", self.state
        self.state = "aborted"


class FakeQueue:
    """begin() hands out FakeWriters; C{results} lists what the next commits do."""

    def __init__(self):
        self.writers = []
        self.committed = []
        self.results = []
        self.beginFailure = None
        self.qp = 4711

    def begin(self, how):
        assert how == b"from network"
        if self.beginFailure is not None:
            raise self.beginFailure
        writer = FakeWriter(self, self.qp)
        self.qp += 1
        self.writers.append(writer)
        return writer


class FakeControls:
    """The ControlDir readers QMTP uses, from a dict (name -> value)."""

    def __init__(self, **files):
        self.files = files
        self.error = None

    def _get(self, name, default):
        if self.error is not None:
            raise self.error
        return self.files.get(name, default)

    def list(self, name, default=None):
        return self._get(name, default)

    def int(self, name, default):
        return self._get(name, default)

    def cdb(self, name):
        return self._get(name, None)


def connect(factoryClass, env=None, queue=None, controls=None, programQueue=None):
    """A server protocol on a StringTransport with a task.Clock at L{NOW}."""
    clock = task.Clock()
    clock.advance(NOW)
    queue = queue or FakeQueue()
    factory = factoryClass(queue, controls if controls is not None else FakeControls(),
                           reactor=clock, programQueue=programQueue)
    proto = factory.buildProtocol(None)
    proto.env = dict(env) if env is not None else {
        "TCPREMOTEIP": "127.0.0.1", "TCPLOCALHOST": "mx.example.com"}
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, queue, clock


def closed(transport):
    return transport.disconnecting
