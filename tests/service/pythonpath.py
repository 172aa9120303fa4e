"""
An interpreter another uid can run, for tests whose daemon, delivery workers, forwards or tools
run as a throwaway user.

The test interpreter may live where no other uid can exec it (here the venv's Python is under
/root, mode 700).  Such tests then run a Python of the same version that the user can exec
(Debian's /usr/bin/python3.X in CI's image) with the repository and this interpreter's
site-packages on PYTHONPATH: what the test imports is what the user's process imports, and C
extensions built for one 3.X load in another.  The daemon passes its environment, and
C{sys.executable}, on to its workers, so they run the same way.
"""

import os
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "%d.%d" % sys.version_info[:2]
SYSTEM_PYTHON = "/usr/bin/python" + VERSION
PROBE = "import twisted.scripts.twistd, qmailtx.scripts.main"
PROBE_TIMEOUT = 60
"""Seconds an import probe may take on a loaded machine."""

_found = {}


def sitePackages():
    """The directories this interpreter imports installed packages from (a venv's, in tests)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def pythonPath():
    """PYTHONPATH that gives another interpreter our qmailtx (the repository) and packages."""
    return os.pathsep.join([REPO] + sitePackages())


def environ(extra=None, base=None):
    """
    C{base} (default C{{"PATH": "/usr/bin:/bin"}}) plus our PYTHONPATH and C{extra}; no
    bytecode is written, since the user cannot write the repository's __pycache__.
    """
    env = dict({"PATH": "/usr/bin:/bin"} if base is None else base)
    env["PYTHONPATH"] = pythonPath()
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def candidatePythons():
    """Ours first (nothing to prove if the user can run it), then the system's of our version."""
    yield sys.executable
    for path in (SYSTEM_PYTHON, "/usr/local/bin/python" + VERSION):
        if os.path.realpath(path) != os.path.realpath(sys.executable):
            yield path


def probe(python, uid, gid):
    """C{None} if C{uid}/C{gid} can run C{python} with Twisted and qmailtx, else why not."""
    if not os.path.exists(python):
        return f"{python}: not installed"
    try:
        result = subprocess.run([python, "-c", PROBE], user=uid, group=gid, extra_groups=[],
                                env=environ(), cwd="/", capture_output=True,
                                timeout=PROBE_TIMEOUT)
    except OSError as e:
        return f"{python}: {e.strerror}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [b"exit %d" % result.returncode])[-1]
        return f"{python}: {last.decode('utf-8', 'replace')}"
    return None


def userPython(uid, gid):
    """
    C{(python, None)} with an interpreter C{uid}/C{gid} can run with qmailtx importable
    (given L{environ}), or C{(None, reason)} saying what each candidate lacked.
    """
    key = (uid, gid)
    if key not in _found:
        reasons = []
        for python in candidatePythons():
            why = probe(python, uid, gid)
            if why is None:
                _found[key] = (python, None)
                break
            reasons.append(why)
        else:
            _found[key] = (None, f"no Python {VERSION} that uid {uid} can run with Twisted "
                                 f"and qmailtx importable ({'; '.join(reasons)})")
    return _found[key]


def requireUserPython(uid, gid):
    """L{userPython}'s interpreter, or skip the calling test with its reason."""
    import pytest

    python, reason = userPython(uid, gid)
    if python is None:
        pytest.skip(reason)
    return python
