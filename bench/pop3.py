"""
C{python -m bench.pop3}: qmailtx's POP3 beside Dovecot's (Debian C{dovecot-pop3d}) on the
same maildirs in one run, both authenticating through the same external checkpassword
shell script.  Run as root (Dovecot needs it; qmailtx then serves through owner workers).

Rows: sessions/s (USER, PASS, STAT, RETR of 1 KB, QUIT; 10 client threads), login+LIST+QUIT
on a 50,000-message maildir (first login after a restart, then repeated logins), and memory
(PSS) per idle authenticated session.  Writes only in a temporary work directory (removed
unless C{--keep}) and prints the table; the issue's targets are checked here, never in tests.
"""

import argparse
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench.memory import memoryOf, processTree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
BIG = 50000

CHECKER = r"""#!/bin/sh
{ IFS= read -r login; IFS= read -r pass; IFS= read -r stamp; } <<END
$(head -c 512 <&3 | tr '\0' '\n')
END
exec 3<&-
[ "$pass" = secret ] || exit 1
case "$login" in small|big) ;; *) exit 1 ;; esac
USER=$login HOME=@HOMES@/$login SHELL=/bin/sh; export USER HOME SHELL
cd "$HOME" || exit 111
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=@UID@ --regid=@GID@ --clear-groups "$@"
fi
exec "$@"
"""


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitPort(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing on port {port}")


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.expect()

    def expect(self):
        line = self.f.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError(line)
        return line

    def cmd(self, line):
        self.sock.sendall(line + b"\r\n")
        return self.expect()

    def multi(self):
        n = 0
        while self.f.readline() != b".\r\n":
            n += 1
        return n

    def login(self, user):
        self.cmd(b"USER " + user)
        self.cmd(b"PASS secret")

    def close(self):
        self.sock.close()


def session(port):
    c = Client(port)
    c.login(b"small")
    c.cmd(b"STAT")
    c.cmd(b"RETR 1")
    c.multi()
    c.cmd(b"QUIT")
    c.close()


def sessionsPerSecond(port, seconds, clients=10):
    done = [0] * clients
    errors = [0]
    stop = time.monotonic() + seconds

    def run(i):
        while time.monotonic() < stop:
            try:
                session(port)
                done[i] += 1
            except Exception:
                errors[0] += 1
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0), errors[0]


def bigList(port):
    t0 = time.monotonic()
    c = Client(port)
    c.login(b"big")
    c.cmd(b"LIST")
    n = c.multi()
    c.cmd(b"QUIT")
    c.close()
    if n != BIG:
        raise RuntimeError(f"LIST gave {n} lines")
    return time.monotonic() - t0


def idleMemory(port, pid, count):
    before = memoryOf(processTree(pid))["pssKiB"]
    held = []
    for _ in range(count):
        c = Client(port)
        c.login(b"small")
        held.append(c)
    time.sleep(1.0)
    after = memoryOf(processTree(pid))["pssKiB"]
    for c in held:
        c.close()
    return (after - before) / count


def makeMaildirs(work, uid, gid):
    homes = os.path.join(work, "homes")
    for user, count in (("small", 1), ("big", BIG)):
        md = os.path.join(homes, user, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub))
        body = b"Subject: bench\n\n" + b"x" * 70 + b"\n"
        body = body * (1024 // len(body))
        past = time.time() - 3600
        for i in range(count):
            p = os.path.join(md, "cur", "%d.M%dP1Q%d.bench:2,S" % (1700000000 + i, i, i))
            with open(p, "wb") as f:
                f.write(body)
            os.utime(p, (past, past))
        for root, dirs, files in os.walk(os.path.join(homes, user)):
            for n in [root] + [os.path.join(root, f) for f in files]:
                os.chown(n, uid, gid)
    return homes


def startQmailtx(work, checker, port):
    root = os.path.join(work, "qmailtx-root")
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(os.path.join(work, "qmailtx.log"), "ab")
    p = subprocess.Popen([TWISTD, "-n", "--pidfile=", "qmail", "--root", root, "--smtp",
                          f"tcp:{freePort()}:interface=127.0.0.1", "--pop3",
                          f"tcp:{port}:interface=127.0.0.1", "--maxconn", "pop3=1000",
                          "--checkpassword", checker], stdout=log, stderr=log, env=env, cwd=work)
    waitPort(port)
    return p


DOVECOT_CONF = """
protocols = pop3
listen = 127.0.0.1
base_dir = {work}/dovecot-run
state_dir = {work}/dovecot-state
log_path = {work}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = checkpassword
  args = {checker}
}}
userdb {{
  driver = prefetch
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  process_limit = 1000
}}
service pop3 {{
  process_limit = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 10000
}}
default_process_limit = 1000
default_client_limit = 2000
"""


def startDovecot(work, checker, port):
    conf = os.path.join(work, "dovecot.conf")
    for d in ("dovecot-run", "dovecot-state"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    with open(conf, "w") as f:
        f.write(DOVECOT_CONF.format(work=work, checker=checker, port=port))
    p = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "dovecot.err"), "ab"))
    waitPort(port)
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def measure(name, start, work, checker, args):
    port = freePort()
    p = start(work, checker, port)
    try:
        session(port)
        first = bigList(port)
        repeated = sorted(bigList(port) for _ in range(5))[2]
        rate, errors = sessionsPerSecond(port, args.seconds)
    finally:
        stop(p)
    port = freePort()
    p = start(work, checker, port)
    try:
        session(port)
        memory = idleMemory(port, p.pid, args.idle)
    finally:
        stop(p)
    return {"sessions/s": rate, "errors": errors, "first LIST 50k (s)": first,
            "repeated LIST 50k (s)": repeated, "KiB per idle session": memory}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.pop3")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--peers", default="qmailtx,dovecot")
    args = parser.parse_args(argv)
    if os.getuid() != 0:
        sys.exit("bench.pop3: run as root")
    work = tempfile.mkdtemp(prefix="qmailtx-bench-pop3-")
    os.chmod(work, 0o755)
    uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
    homes = makeMaildirs(work, uid, gid)
    checker = os.path.join(work, "checkpassword")
    with open(checker, "w") as f:
        f.write(CHECKER.replace("@HOMES@", homes).replace("@UID@", str(uid))
                .replace("@GID@", str(gid)))
    os.chmod(checker, 0o755)
    starters = {"qmailtx": startQmailtx, "dovecot": startDovecot}
    results = {}
    try:
        for name in args.peers.split(","):
            results[name] = measure(name, starters[name], work, checker, args)
            sys.stderr.write(f"{name}: {results[name]}\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = list(next(iter(results.values())).keys())
    print("%-26s" % "row" + "".join("%14s" % n for n in results))
    for row in rows:
        print("%-26s" % row + "".join("%14.2f" % results[n][row] for n in results))
    if "qmailtx" in results and "dovecot" in results:
        q, d = results["qmailtx"], results["dovecot"]
        targets = [
            ("sessions/s >= 2x Dovecot", q["sessions/s"] >= 2 * d["sessions/s"]),
            ("first LIST >= 3x faster", q["first LIST 50k (s)"] * 3 <= d["first LIST 50k (s)"]),
            ("repeated LIST <= Dovecot", q["repeated LIST 50k (s)"] <= d["repeated LIST 50k (s)"]),
            ("< 20 KiB per idle session", q["KiB per idle session"] < 20),
        ]
        for label, ok in targets:
            print(f"{label:30s} {'PASS' if ok else 'FAIL'}")
    return results


if __name__ == "__main__":
    main()
