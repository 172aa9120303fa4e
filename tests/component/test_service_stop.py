"""The daemon's service tree at SIGTERM: what its stop waits for."""

from types import SimpleNamespace

from twisted.application import service
from twisted.internet import defer, task

from qmailtx.commits import Commits
from qmailtx.service import QmailService


class SlowStop(service.Service):
    """A child whose stop takes as long as the test says (qmail-send's running deliveries)."""

    def __init__(self):
        self.stopped = defer.Deferred()

    def stopService(self):
        service.Service.stopService(self)
        return self.stopped


def test_stopWaitsForWorkBegunWhileChildrenStop():
    """
    New messages are refused from the start of the stop, but a POP3 QUIT read while
    qmail-send still waits for its deliveries owes its client +OK as well: the tree's stop
    ends only once that UPDATE has answered, not when the children are done.
    """
    clock = task.Clock()
    commits = Commits(clock)
    top = QmailService(SimpleNamespace(commits=commits))
    child = SlowStop()
    child.setServiceParent(top)
    top.startService()
    stopped = []
    top.stopService().addCallback(stopped.append)
    assert commits.closed
    update = commits.track(defer.Deferred())
    child.stopped.callback(None)
    clock.advance(0)
    assert not stopped
    update.callback(0)
    clock.advance(0)
    assert stopped
