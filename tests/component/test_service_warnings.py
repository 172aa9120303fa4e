"""
Started as root, the daemon says at once when mailbox owners could not reach what their
deliveries need, instead of leaving it to the first deferral to tell.
"""

import os
import shutil
import sys
import tempfile

import pytest
from qmailtx.service import _runtimePaths, _warnUnreachableAlias, _warnUnreachableRuntime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the warnings are for root-run daemons")


@pytest.fixture
def base():
    """A directory every user may pass through (pytest's own is root's alone)."""
    path = tempfile.mkdtemp(prefix="qmailtx-warn-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_runtimeClosedToOtherUsers(base, qmailLines):
    """A Python (or package) under a directory only root may enter: forwards would defer."""
    closed = os.path.join(base, "closed")
    os.mkdir(closed, 0o700)
    python = os.path.join(closed, "python3")
    open(python, "w").close()
    os.chmod(python, 0o755)
    _warnUnreachableRuntime([str(python)])
    assert len(qmailLines) == 1
    assert qmailLines[0].startswith(f"warning: forwards will defer: mailbox owners cannot reach "
                                  f"{python} ({closed} is closed to them)")
    os.chmod(closed, 0o755)
    _warnUnreachableRuntime([str(python)])
    assert len(qmailLines) == 1


def test_runtimePathsNameWhatAForwardRuns():
    """The interpreter as a forward execs it (its name, maybe a symlink in a closed venv) and
    as resolved, and the package files themselves, so a closed package directory counts."""
    import twisted

    import qmailtx

    paths = _runtimePaths()
    assert paths[0] == sys.executable and paths[1] == os.path.realpath(sys.executable)
    assert os.path.realpath(qmailtx.__file__) in paths
    assert os.path.realpath(twisted.__file__) in paths


def test_aliasClosedToTheAliasUser(base, qmailLines):
    """ROOT/alias where its owner cannot pass: alias deliveries would defer."""
    root = os.path.join(base, "root")
    os.makedirs(os.path.join(root, "alias"))
    os.chown(os.path.join(root, "alias"), 65534, 65534)
    os.chmod(root, 0o700)
    _warnUnreachableAlias(str(root))
    assert qmailLines == [f"warning: alias deliveries will defer: uid 65534 cannot pass through "
                        f"{root}; put the root where its mail users can reach it"]
