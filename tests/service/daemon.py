"""
Start a real C{twistd -n qmail} on 127.0.0.1 for service, crash and bench tests.

The daemon runs from the repository (PYTHONPATH) so twistd finds our plugin without an
install; its log goes to a file in the root's parent so a failing test keeps it.
L{SystemDaemon} runs it under an interpreter (and optionally a uid) of the test's choosing.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from tests.service import pythonpath

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TWISTD_MAIN = "from twisted.scripts.twistd import run; run()"
"""twistd's entry point for C{python -c}, so no script file need be readable."""


def twistdCommand(python=None):
    """
    argv that starts twistd: the script beside our interpreter, else twistd's entry point
    run by C{python} (our interpreter by default), as for a system Python that gets its
    packages from PYTHONPATH and has no twistd script of its own.
    """
    if python is None and os.path.exists(TWISTD):
        return [TWISTD]
    return [python or sys.executable, "-c", TWISTD_MAIN]


def freePort(host="127.0.0.1"):
    return freePorts(1, host)[0]


def freePorts(count, host="127.0.0.1"):
    """C{count} distinct free ports: every socket stays bound until all are chosen, so the
    kernel cannot hand out one port twice (it did: smtp and smtps on one port, exit 111)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = [socket.socket(family) for _ in range(count)]
    try:
        for s in held:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def waitForPort(port, host="127.0.0.1", timeout=20.0, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


def loopbackResolvConf(directory):
    """
    A resolv.conf naming only 127.0.0.1, so a test daemon's DNS look-ups never leave the
    machine: with nothing listening there they fail at once (a temporary failure).
    """
    path = os.path.join(directory, "resolv.conf.loopback")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("nameserver 127.0.0.1\n")
    return path


class Daemon:
    """
    One C{twistd -n qmail} process.  C{listeners} maps a service name (C{smtp}, ...) to the
    port it should use; C{extra} are further command-line words.
    """

    def __init__(self, root, listeners=("smtp",), extra=(), env=None, host="127.0.0.1"):
        self.root = str(root)
        self.host = host
        self.ports = dict(zip(listeners, freePorts(len(listeners), host)))
        self.extra = list(extra)
        self.env = env
        self.logPath = self.root.rstrip("/") + ".log"
        self.process = None

    @property
    def port(self):
        return self.ports["smtp"]

    def twistd(self):
        return twistdCommand()

    def command(self):
        cmd = self.twistd() + ["-n", "--pidfile=", "qmail", "--root", self.root]
        for name, port in self.ports.items():
            interface = self.host.replace(":", "\\:")
            cmd += [f"--{name}", f"tcp:{port}:interface={interface}"]
        return cmd + self.extra

    def start(self, wait=True):
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("QMAILTX_RESOLV_CONF", loopbackResolvConf(os.path.dirname(self.root)))
        self._log = open(self.logPath, "ab")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=os.path.dirname(self.root) or ".")
        if wait:
            for port in self.ports.values():
                waitForPort(port, self.host, process=self.process)
        return self

    def log(self):
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def kill(self):
        self.stop(signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SystemDaemon(Daemon):
    """
    twistd run by C{python} with the repository and our site-packages on PYTHONPATH (see
    L{pythonpath}), as root or, given C{user=(uid, gid)}, as that user: its delivery workers
    and their forwards exec the same interpreter, so it must be one the mailbox owners can run.
    """

    def __init__(self, root, python, user=None, **kwargs):
        Daemon.__init__(self, root, **kwargs)
        self.python = python
        self.user = user

    def twistd(self):
        return twistdCommand(self.python)

    def start(self, wait=True):
        env = pythonpath.environ(base=os.environ if self.env is None else self.env)
        resolvConf = loopbackResolvConf(os.path.dirname(self.root))
        env.setdefault("QMAILTX_RESOLV_CONF", resolvConf)
        self._log = open(self.logPath, "ab")
        credentials = {}
        if self.user is not None:
            env["QMAILTX_RESOLV_CONF"] = resolvConf  # the suite's may be in a root-only dir
            os.chown(self.logPath, *self.user)
            credentials = dict(user=self.user[0], group=self.user[1], extra_groups=[])
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=os.path.dirname(self.root) or ".",
                                        **credentials)
        if wait:
            for port in self.ports.values():
                waitForPort(port, self.host, process=self.process)
        return self
