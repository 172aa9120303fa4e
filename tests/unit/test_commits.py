"""qmailtx.commits: a stopping daemon waits for the listeners' commits in flight."""

from twisted.internet import defer, task

from qmailtx.commits import Commits
from qmailtx.results import TempFailure


class FakeWriter:
    def __init__(self):
        self.commitDeferred = defer.Deferred()
        self.aborted = False
        self.qp = 7

    def commit(self, sender, recipients):
        self.commitDeferred.sender = sender
        return self.commitDeferred

    def abort(self):
        self.aborted = True


class FakeQueue:
    queueDir = "/nowhere"

    def __init__(self):
        self.writers = []
        self.begun = []

    def begin(self, *args, **kwargs):
        self.begun.append((args, kwargs))
        self.writers.append(FakeWriter())
        return self.writers[-1]


def failureOf(d):
    out = []
    d.addErrback(out.append)
    assert out, "Deferred did not fail"
    return out[0].value


def test_closeWaitsForCommitsInFlight():
    """
    A commit in flight may be queued already: close() fires only after it has answered, and
    after the reactor's next pass over its sockets, so that an answer a transport buffered
    is written before the reactor drops the connections.  A commit after close() fails at once, temporarily, in
    the words of QQ_SHUTTING_DOWN, and its message is dropped.
    """
    clock = task.Clock()
    commits = Commits(clock)
    queue = FakeQueue()
    watched = commits.watch(queue)
    first, second = watched.begin(b"from network"), watched.begin(b"from network", uid=5)
    answers = []
    for writer in (first, second):
        writer.commit(b"a", [b"b"]).addCallback(answers.append)
    closed = commits.close()
    late = watched.begin(b"from network")
    refused = failureOf(late.commit(b"a", [b"b"]))
    assert isinstance(refused, TempFailure)
    assert refused.text == b"qq shutting down, try again later (#4.3.2)"
    assert queue.writers[2].aborted and not queue.writers[2].commitDeferred.called
    queue.writers[0].commitDeferred.callback(1)
    queue.writers[1].commitDeferred.callback(2)
    assert answers == [1, 2] and not closed.called
    clock.advance(0)
    assert closed.called
    assert queue.begun[1] == ((b"from network",), {"uid": 5})


def test_failedCommitsCountAsAnswered():
    clock = task.Clock()
    commits = Commits(clock)
    queue = FakeQueue()
    writer = commits.watch(queue).begin(b"from network")
    d = writer.commit(b"a", [b"b"])
    closed = commits.close()
    queue.writers[0].commitDeferred.errback(TempFailure(b"qq write error or disk full (#4.3.0)"))
    assert isinstance(failureOf(d), TempFailure)
    clock.advance(0)
    assert closed.called


def test_closeWithNothingInFlightFiresAtOnce():
    """A daemon with no message on its way stops without waiting."""
    commits = Commits(task.Clock())
    assert commits.close().called


def test_closeGivesUpAfterItsLimit():
    """A queue that never answers does not hold the stop for ever: close() fires after its
    limit (the client may then send its message again), and the late answer still arrives."""
    clock = task.Clock()
    commits = Commits(clock)
    queue = FakeQueue()
    answers = []
    commits.watch(queue).begin(b"x").commit(b"a", [b"b"]).addCallback(answers.append)
    closed = commits.close(limit=4)
    clock.advance(3.9)
    assert not closed.called
    clock.advance(0.2)
    assert closed.called
    queue.writers[0].commitDeferred.callback(9)
    clock.advance(0)
    assert answers == [9]


def test_watchedQueueAndWriterAreTheirOwnOtherwise():
    """Everything but begin() and commit() is the watched queue's and writer's own."""
    queue = FakeQueue()
    watched = Commits(task.Clock()).watch(queue)
    assert watched.queueDir == "/nowhere"
    writer = watched.begin(b"x")
    assert writer.qp == 7
    writer.abort()
    assert queue.writers[0].aborted


def test_trackedWorkIsWaitedForAndNeverRefused():
    """POP3's UPDATE (a QUIT's deletions) owes its client an answer too: a stop waits for
    it, without a limit for the daemon itself, and one begun after close() still runs."""
    clock = task.Clock()
    commits = Commits(clock)
    update = commits.track(defer.Deferred())
    closed = commits.close(limit=None)
    late = commits.track(defer.Deferred())
    clock.advance(3600)
    assert not closed.called and not clock.getDelayedCalls()
    update.callback(0)
    late.callback(0)
    clock.advance(0)
    assert closed.called


def test_closeWaitsForMessagesStillArriving():
    """
    A message begun but not yet ended when the stop begins is waited for: its end gets
    qq shutting down (not a dropped connection), and close() fires after that answer;
    one whose client goes away (abort) is not waited for either.
    """
    clock = task.Clock()
    commits = Commits(clock)
    watched = commits.watch(FakeQueue())
    arriving, dropped = watched.begin(b"from network"), watched.begin(b"from network")
    closed = commits.close(limit=60)
    clock.advance(1)
    assert not closed.called
    dropped.abort()
    refused = failureOf(arriving.commit(b"a", [b"b"]))
    assert refused.text == b"qq shutting down, try again later (#4.3.2)"
    assert not closed.called
    clock.advance(0)
    clock.advance(0)
    assert closed.called and clock.getDelayedCalls() == []


def test_closeStopsWaitingForSlowMessages(qmailLines):
    """A client still sending after OPEN_MESSAGE_WAIT is not waited for any longer (it sends
    the message again later), even under a longer limit for commits in flight."""
    from qmailtx.commits import OPEN_MESSAGE_WAIT

    clock = task.Clock()
    commits = Commits(clock)
    slow = commits.watch(FakeQueue()).begin(b"from network")
    closed = commits.close(limit=60)
    clock.advance(OPEN_MESSAGE_WAIT - 0.1)
    assert not closed.called
    clock.advance(0.1)
    clock.advance(0)
    clock.advance(0)
    assert closed.called
    assert qmailLines == ["warning: stopping while 1 messages are still arriving; their "
                          "clients will send them again"]
    assert failureOf(slow.commit(b"a", [b"b"])).text == b"qq shutting down, try again later (#4.3.2)"


def test_farewellsAreSaidOnceTheWaitIsOver(logEvents):
    """
    The listeners' goodbyes (SMTP's 421) come after the last commit in flight has answered,
    not before (that client would hear 421 instead of its 250), and before close() fires;
    each once, however often close() is called.  One that raises is logged and does not
    stop the others.
    """
    clock = task.Clock()
    commits = Commits(clock)
    queue = FakeQueue()
    said = []

    def broken():
        raise RuntimeError("gone")

    def farewell(name):
        said.append((name, bool(fired)))

    commits.farewells += [lambda: farewell("smtp"), broken, lambda: farewell("smtps")]
    commits.watch(queue).begin(b"x").commit(b"a", [b"b"])
    fired = []
    commits.close().addCallback(fired.append)
    clock.advance(3)
    assert said == [] and not fired
    queue.writers[0].commitDeferred.callback(1)
    clock.advance(0)
    assert said == [("smtp", False), ("smtps", False)] and fired == [None]
    assert commits.close().called and len(said) == 2
    failures = [e["log_failure"] for e in logEvents if "log_failure" in e]
    assert [f.type for f in failures] == [RuntimeError]
