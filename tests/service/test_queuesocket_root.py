"""
A live C{twistd qmail} started as root, with an ordinary user on the other side of the queue
socket: a forward (C{&address}) delivered as the mailbox owner is injected through
C{qmailtx queue}, which cannot write the root's queue and hands the message to the daemon; and
the user's own C{qmailtx queue} and C{qmailtx inject} get their messages queued the same way.
Each Received line says C{invoked by uid <the user's uid>}, taken by the daemon from the
socket's peer credentials.

The venv's interpreter lives under /root (mode 700) here, so no other uid can exec it: the
daemon runs under a system Python of the same version (with the venv's site-packages and the
repository on PYTHONPATH; L{tests.service.pythonpath}), whose path its delivery workers and
their forwards then exec.  Skipped when no such interpreter can run as the throwaway user.
"""

import os
import re
import subprocess
import tempfile

import pytest

from tests.service import pythonpath
from tests.service.daemon import SystemDaemon
from tests.service.test_delivery import ME, MailUser, Setup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon as root and a second uid")


@pytest.fixture(scope="module")
def user():
    u = MailUser()
    yield u
    u.close()


@pytest.fixture
def site(user):
    python = pythonpath.requireUserPython(user.uid, user.gid)
    s = Setup(user, tempfile.mkdtemp(dir=user.base))
    s.python = python
    s.dotqmail(".qmail-fwd", b"&joe-box@" + ME.encode() + b"\n")
    s.dotqmail(".qmail-box", b"./Maildir/\n")
    s.start(SystemDaemon(s.root, python))
    yield s
    s.stop()


def receivedBy(mail, uid):
    return re.search(rb"\nReceived: \(qmail \d+ invoked by uid %d\); " % uid, b"\n" + mail)


def test_forwardAsOwnerGoesThroughTheSocket(site, user):
    """A .qmail &forward delivered as the owner is queued via the queue socket (the owner cannot write queue/) and delivered."""
    queue = os.stat(os.path.join(site.root, "queue"))
    assert (queue.st_uid, queue.st_mode & 0o007) == (0, 0)
    site.send("someone@example.org", ["joe-fwd@" + ME])
    [mail] = site.mails()
    assert b"Delivered-To: joe-box@" + ME.encode() + b"\n" in mail
    assert b"Delivered-To: joe-fwd@" + ME.encode() + b"\n" in mail
    assert receivedBy(mail, user.uid)
    assert b" invoked from network); " in mail
    site.logLine(r"delivery \d+: success: did_0\+1\+0/qp_\d+/")
    site.logLine(r"info msg \d+: bytes \d+ from <someone@example.org> qp \d+ uid %d\n" % user.uid)


def runAsUser(site, user, args, stdin, extraEnv=None):
    env = pythonpath.environ(extraEnv)
    return subprocess.run([site.python, "-m", "qmailtx.scripts.main"] + args, input=stdin,
                          user=user.uid, group=user.gid, extra_groups=[], env=env,
                          cwd=user.base, capture_output=True, timeout=60)


def test_usersQueueAndInjectUseTheirUid(site, user):
    """An ordinary uid's `qmailtx queue` and `qmailtx inject` against a root-run daemon are queued 'invoked by uid' that uid."""
    envelope = b"Fjoe@" + ME.encode() + b"\0Tjoe-box@" + ME.encode() + b"\0\0"
    readFd, writeFd = os.pipe()
    os.write(writeFd, envelope)
    os.close(writeFd)
    try:
        queued = subprocess.run(
            [site.python, "-m", "qmailtx.scripts.main", "queue", "--root", site.root],
            input=b"Subject: by queue\n\nq\n", stdout=readFd, user=user.uid, group=user.gid,
            extra_groups=[], env=pythonpath.environ(),
            cwd=user.base, timeout=60)
    finally:
        os.close(readFd)
    assert queued.returncode == 0
    injected = runAsUser(site, user, ["inject", "joe-box@" + ME],
                         b"Subject: by inject\n\ni\n", {"QMAILHOME": site.root})
    assert injected.returncode == 0, injected.stderr
    mails = site.mails(count=2)
    for subject in (b"by queue", b"by inject"):
        [mail] = [m for m in mails if b"Subject: " + subject + b"\n" in m]
        assert receivedBy(mail, user.uid), mail
    assert os.listdir(os.path.join(site.root, "queue", "pid")) == []


def test_enqueueRefusedWithoutDaemonSocket(site, user):
    """With the daemon stopped (socket gone), the user's `qmailtx queue` fails as qmail-queue would: trouble creating files."""
    site.stop()
    assert not os.path.exists(os.path.join(site.root, "public", "qmail-queue"))
    result = runAsUser(site, user, ["inject", "joe-box@" + ME], b"Subject: x\n\nx\n",
                       {"QMAILHOME": site.root})
    assert result.returncode == 111
    assert b"qq trouble creating files in queue" in result.stderr


@pytest.mark.parametrize("closed", [0, 1])
def test_closedMessageOrEnvelopeDescriptor(site, user, closed):
    """The user's `qmailtx queue` with fd 0 or fd 1 closed exits 54, as qmail-queue does,
    instead of reading its own connection to the daemon as the message or envelope."""
    envelope = b"Fjoe@" + ME.encode() + b"\0Tjoe-box@" + ME.encode() + b"\0\0"
    readFd, writeFd = os.pipe()
    os.write(writeFd, envelope)
    os.close(writeFd)

    def closeOne():
        os.close(closed)
    try:
        queued = subprocess.run(
            [site.python, "-m", "qmailtx.scripts.main", "queue", "--root", site.root],
            input=b"Subject: by queue\n\nq\n", stdout=readFd, user=user.uid, group=user.gid,
            extra_groups=[], env=pythonpath.environ(), cwd=user.base, timeout=30,
            preexec_fn=closeOne)
    finally:
        os.close(readFd)
    assert queued.returncode == 54
