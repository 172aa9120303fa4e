"""Helpers for local-delivery component tests: a fake queue program and a worker client."""

import os
import stat
import subprocess
import sys

from qmailtx import netstring

FAKE_QUEUE = r'''#!PYTHON
import os, sys
root = os.getcwd()
message = os.read(0, 1 << 20)
while True:
    chunk = os.read(0, 1 << 20)
    if not chunk:
        break
    message += chunk
envelope = b""
while True:
    chunk = os.read(1, 65536)
    if not chunk:
        break
    envelope += chunk
out = os.path.join(root, "injected")
os.makedirs(out, exist_ok=True)
name = os.path.join(out, "%d" % os.getpid())
with open(name + ".env", "wb") as f:
    f.write(envelope)
with open(name + ".msg", "wb") as f:
    f.write(message)
code = 0
if os.path.exists(os.path.join(root, "qqexit")):
    code = int(open(os.path.join(root, "qqexit")).read())
if os.path.exists(os.path.join(root, "qqtext")):
    os.write(6, open(os.path.join(root, "qqtext"), "rb").read())
sys.exit(code)
'''


def writeFakeQueue(root):
    """A queue program that stores what it gets under C{<cwd>/injected/<pid>.msg|.env}."""
    path = os.path.join(root, "fakequeue")
    with open(path, "w") as f:
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        f.write(FAKE_QUEUE.replace("PYTHON", python))
    os.chmod(path, 0o755)
    return path


def injected(root):
    """Every injection so far: list of (message bytes, envelope bytes), oldest first."""
    out = os.path.join(root, "injected")
    if not os.path.isdir(out):
        return []
    names = sorted((n for n in os.listdir(out) if n.endswith(".msg")),
                   key=lambda n: os.stat(os.path.join(out, n)).st_mtime_ns)
    result = []
    for n in names:
        base = os.path.join(out, n[:-4])
        result.append((open(base + ".msg", "rb").read(), open(base + ".env", "rb").read()))
    return result


def workerEnv(extra=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.update(extra or {})
    return env


class Worker:
    """A running C{qmailtx deliverworker} and a blocking client for it."""

    def __init__(self, root, env, args=(), preexec=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qmailtx.scripts.main", "deliverworker", "--root", root,
             *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, preexec_fn=preexec)

    def deliver(self, message, user, home, local, dash=b"", ext=b"", domain=b"example.com",
                sender=b"joe@example.org", default=b"./Mailbox"):
        fields = [b"deliver", os.fsencode(message), user, os.fsencode(home), local, dash, ext,
                  domain, sender, default]
        self.proc.stdin.write(netstring.encode(netstring.encodeList(fields)))
        self.proc.stdin.flush()
        digits = b""
        while True:
            c = self.proc.stdout.read(1)
            assert c, "worker died"
            if c == b":":
                break
            digits += c
        report = self.proc.stdout.read(int(digits))
        assert self.proc.stdout.read(1) == b","
        return report

    def close(self):
        self.proc.stdin.close()
        code = self.proc.wait(10)
        self.proc.stdout.close()
        return code


def makeHome(path, mode=0o755):
    os.makedirs(path)
    os.chmod(path, mode)
    return str(path)


def writeFile(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return str(path)


def isRegular(path):
    return stat.S_ISREG(os.stat(path).st_mode)


class Space:
    """
    Where delivery tests put homes, messages and the qmail root: a world-traversable
    directory whose entries belong to the user the worker runs as.  Run as root, that is a
    throwaway user made with useradd (removed by L{close}); otherwise the current user.
    """

    def __init__(self, base):
        import tempfile
        self.base = tempfile.mkdtemp(prefix="qmailtx-deliver-", dir=base)
        os.chmod(self.base, 0o755)
        self.user = None
        if os.geteuid() == 0:
            import pwd
            self.user = "qmtx%d" % os.getpid()
            subprocess.run(["useradd", "-M", "-N", "-s", "/bin/false", "-d", "/nonexistent",
                            self.user], check=True, capture_output=True)
            entry = pwd.getpwnam(self.user)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        self.count = 0

    def workerArgs(self):
        """deliverworker arguments that make it drop to our user when we are root."""
        if self.user is None:
            return []
        return ["--uid", str(self.uid), "--gid", str(self.gid)]

    def _own(self, path):
        if self.user is not None:
            os.chown(path, self.uid, self.gid)

    def mkdir(self, path, mode=0o755):
        os.mkdir(path)
        os.chmod(path, mode)
        self._own(path)
        return str(path)

    def fresh(self, prefix="d", mode=0o755):
        self.count += 1
        return self.mkdir(os.path.join(self.base, "%s%d" % (prefix, self.count)), mode)

    def file(self, path, data, mode=0o644):
        writeFile(path, data, mode)
        self._own(path)
        return str(path)

    def close(self):
        import shutil
        shutil.rmtree(self.base, ignore_errors=True)
        if self.user is not None:
            subprocess.run(["userdel", self.user], capture_output=True)
