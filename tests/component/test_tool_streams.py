"""
Every C{qmailtx} tool, given a closed stdin or stdout or an output it cannot write (a
full disk), says so in one line and exits 111 instead of a Python traceback; C{init} and
C{twistd qmail --me} refuse a host name that cannot be one line of control/me.
"""

import os
import subprocess
import sys

import pytest

from qmailtx.rootdir import createRoot
from tests.service.daemon import REPO


def tool(*args, closed=None, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL):
    def close():
        os.close(closed)
    return subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", *args],
                          stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=REPO),
                          preexec_fn=close if closed is not None else None, timeout=60)


@pytest.fixture
def root(tmp_path):
    createRoot(str(tmp_path / "root"), "mx.example.com")
    return str(tmp_path / "root")


def oneLine(result, prefix):
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.startswith(prefix), text


@pytest.mark.parametrize("args", [["qstat"], ["qread"], ["showctl"]])
def test_closedStdout(root, args):
    result = tool(*args, "--root", root, closed=1)
    assert result.returncode == 111
    oneLine(result, f"{args[0]}: fatal: ")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_fullDisk(root):
    with open("/dev/full", "wb") as full:
        result = tool("showctl", "--root", root, stdout=full)
    assert result.returncode == 111
    oneLine(result, "showctl: fatal: No space left on device")


@pytest.mark.parametrize("args", [["tcprules", "x.cdb", "x.tmp"],
                                  ["local", "-n", "bob", "/tmp", "bob", "", "", "example.com",
                                   "s@example.com", "./Maildir/"]])
def test_closedStdin(tmp_path, args):
    result = subprocess.run(
        [sys.executable, "-m", "qmailtx.scripts.main", *args], cwd=tmp_path,
        stdin=subprocess.DEVNULL, capture_output=True, env=dict(os.environ, PYTHONPATH=REPO),
        preexec_fn=lambda: os.close(0), timeout=60)
    assert result.returncode == 111
    oneLine(result, f"{args[0]}: fatal: ")
    assert not os.path.exists(tmp_path / "x.cdb")


@pytest.mark.parametrize("me", ["a\nb", "mx example", "m\u00e9.example"])
def test_initRefusesBadHostName(tmp_path, me):
    result = tool("init", str(tmp_path / "r"), "--me", me)
    assert result.returncode == 100
    oneLine(result, "init: fatal: ")
    assert not os.path.exists(tmp_path / "r")


def test_initRefusesAnExistingRoot(tmp_path):
    """init never overwrites: a second init of the same root exits 100 and changes nothing."""
    root = tmp_path / "r"
    assert tool("init", str(root), "--me", "first.example").returncode == 0
    me = (root / "control" / "me").read_bytes()
    result = tool("init", str(root), "--me", "second.example")
    assert result.returncode == 100
    oneLine(result, "init: fatal: ")
    assert b"already exists" in result.stderr
    assert (root / "control" / "me").read_bytes() == me == b"first.example\n"


@pytest.mark.parametrize("closed", [0, 1])
def test_queueKeepsItsOwnExitCode(root, closed):
    """A tool that handles a closed descriptor itself keeps its own answer: qmail-queue's
    54, not the dispatcher's 111."""
    result = tool("queue", "--root", root, closed=closed)
    assert result.returncode == 54
    assert os.listdir(os.path.join(root, "queue", "todo")) == []


def test_daemonRefusesBadHostName(tmp_path):
    """twistd qmail --me checks the name as init does, before it creates a root."""
    from twisted.python import usage

    from qmailtx.tap import Options

    with pytest.raises(usage.UsageError, match="is not a host name"):
        Options().parseOptions(["--root", str(tmp_path / "r"), "--me", "a\nb"])
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("option, description, reason", [
    ("--smtp", "bogus:xx", "Unknown endpoint type"),
    ("--pop3", "tcp:notaport", "invalid literal"),
])
def test_twistdBadEndpointIsAUsageError(tmp_path, option, description, reason):
    """An endpoint string Twisted cannot parse is refused with the option's usage error (one
    line from twistd, exit 1), not a traceback from the service's start."""
    from twisted.python import usage

    from qmailtx.tap import Options

    with pytest.raises(usage.UsageError, match=f"{option} '{description}': .*{reason}"):
        Options().parseOptions(["--root", str(tmp_path / "r"), option, description,
                                "--checkpassword", "/bin/true"])
    assert not os.path.exists(tmp_path / "r")
