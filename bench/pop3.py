"""
C{python -m bench.pop3}: qmailtx's POP3 beside Dovecot's (Debian C{dovecot-pop3d}) on the
same maildirs in one run, both authenticating through the same external checkpassword
shell script.  Run as root (Dovecot needs it; qmailtx then serves through owner workers).

Rows: sessions/s (USER, PASS, STAT, RETR of 1 KB, QUIT; 10 client threads), login+LIST+QUIT
on a 50,000-message maildir, first login after a restart (Dovecot unindexed: its index files
are removed before every restart) and repeated logins, and memory (PSS) per idle
authenticated session.  The 50,000-message row runs on two maildirs: one whose names are
those qmailtx's own delivery writes (C{<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>}, mtime the
name's time), and one whose names carry nothing (another MDA's), which costs qmailtx a stat
per message.  Like C{python -m bench}: rounds with the peer order rotated, medians and
paired ratios, the table of L{bench.report}.  Writes only in a temporary work directory
(removed unless C{--keep}) and the JSON record in bench/results/; the issue's targets are
checked here, never in tests.
"""

import argparse
import datetime
import functools
import glob
import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench import report
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
case "$login" in small|big|plain) ;; *) exit 1 ;; esac
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


def bigList(port, user=b"big"):
    t0 = time.monotonic()
    c = Client(port)
    c.login(user)
    c.cmd(b"LIST")
    n = c.multi()
    c.cmd(b"QUIT")
    c.close()
    if n != BIG:
        raise RuntimeError(f"LIST gave {n} lines")
    return (time.monotonic() - t0) * 1000


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


def messageName(i, size, style, base):
    """
    The i-th file name of a bench maildir in cur/, with its mtime in ns, 20 messages a
    second.  C{qmailtx}: as qmailtx's maildir delivery names and stamps it; C{plain}: a name
    in qmail-local's modern form that says nothing about the file's time or size.
    """
    sec, usec = base + i // 20, (i % 20) * 50000 + i % 7
    mtime = (sec * 10**6 + usec) * 1000
    if style == "plain":
        return "%d.M%dP1Q%d.bench:2,S" % (sec, usec, i), mtime
    return "%d.M%06dP1Q%d.bench,S=%d:2,S" % (sec, usec, i, size), mtime


def makeMaildirs(work, uid, gid):
    homes = os.path.join(work, "homes")
    body = b"Subject: bench\n\n" + b"x" * 70 + b"\n"
    body = body * (1024 // len(body))
    base = int(time.time()) - 4 * 3600
    for user, count, style in (("small", 1, "qmailtx"), ("big", BIG, "qmailtx"),
                               ("plain", BIG, "plain")):
        md = os.path.join(homes, user, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub))
        for i in range(count):
            name, mtime = messageName(i, len(body), style, base)
            p = os.path.join(md, "cur", name)
            with open(p, "wb") as f:
                f.write(body)
            os.utime(p, ns=(mtime, mtime))
        for root, dirs, files in os.walk(os.path.join(homes, user)):
            for n in [root] + [os.path.join(root, f) for f in files]:
                os.chown(n, uid, gid)
    return homes


def forgetDovecotIndexes(homes):
    """Remove what Dovecot learned about the maildirs, so its next login is unindexed."""
    for path in glob.glob(os.path.join(homes, "*", "Maildir", "dovecot*")):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def startQmailtx(work, checker, port, repo=REPO, name="qmailtx"):
    root = os.path.join(work, name + "-root")
    env = dict(os.environ, PYTHONPATH=repo)
    log = open(os.path.join(work, name + ".log"), "ab")
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


class Sample:
    """One measurement, shaped as L{bench.report} expects."""

    def __init__(self, value, errors=0, detail=None):
        self.value = value
        self.errors = errors
        self.detail = detail or {}


class Row:
    """One row of the table (the fields of L{bench.scenarios.Scenario} that report reads)."""

    def __init__(self, key, label, unit, target):
        self.key = key
        self.label = label
        self.unit = unit
        self.target = target
        self.higherIsBetter = unit.endswith("/s")


def judge(text, test):
    def target(medians, errors):
        mine = medians.get("qmailtx")
        theirs = medians.get("dovecot")
        if mine is None or (theirs is None and "Dovecot" in text):
            return None, text + ": not measured"
        return bool(test(mine, theirs)) and not errors.get("qmailtx"), text
    return target


ROWS = [
    Row("pop3-sessions-10c", "POP3 sessions, 10 clients (USER PASS STAT RETR QUIT)",
        "sess/s", judge(">= 2x Dovecot", lambda q, d: q >= 2 * d)),
    Row("pop3-first-list-50k", "POP3 first login+LIST+QUIT, 50k msgs, qmailtx names", "ms",
        judge("<= Dovecot / 3", lambda q, d: 3 * q <= d)),
    Row("pop3-first-list-50k-plain", "POP3 first login+LIST+QUIT, 50k msgs, plain names",
        "ms", judge("<= Dovecot / 3", lambda q, d: 3 * q <= d)),
    Row("pop3-repeated-list-50k", "POP3 repeated login+LIST+QUIT, 50k msgs", "ms",
        judge("<= Dovecot", lambda q, d: q <= d)),
    Row("pop3-idle-memory", "POP3 idle authenticated sessions, memory", "KiB/sess",
        judge("< 20 KiB", lambda q, d: q < 20)),
]


def attempt(samples, key, name, function, *args):
    try:
        value, errors = function(*args)
        sample = Sample(value, errors)
    except Exception as e:
        sample = Sample(None, 1, {"exception": f"{type(e).__name__}: {e}"})
    samples[key].setdefault(name, []).append(sample)
    sys.stderr.write(f"  {key:28} {name:8} {sample.value!s:.8} errors={sample.errors}\n")


def one(function):
    """A measure returning a value only, as C{(value, 0)}."""
    return lambda *args: (function(*args), 0)


def measureRound(name, start, work, homes, checker, args, samples):
    if name == "dovecot":
        forgetDovecotIndexes(homes)
    port = freePort()
    p = start(work, checker, port)
    try:
        session(port)
        attempt(samples, "pop3-first-list-50k", name, one(bigList), port, b"big")
        attempt(samples, "pop3-first-list-50k-plain", name, one(bigList), port, b"plain")
        attempt(samples, "pop3-repeated-list-50k", name,
                one(lambda: sorted(bigList(port) for _ in range(3))[1]))
        attempt(samples, "pop3-sessions-10c", name, sessionsPerSecond, port, args.seconds)
    finally:
        stop(p)


def measureMemory(name, start, work, checker, args, samples):
    port = freePort()
    p = start(work, checker, port)
    try:
        session(port)
        attempt(samples, "pop3-idle-memory", name, one(idleMemory), port, p.pid, args.idle)
    finally:
        stop(p)


STARTERS = {"qmailtx": startQmailtx, "dovecot": startDovecot}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.pop3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, shorter rates")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="length of one sessions/s measurement")
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--peers", default="qmailtx,dovecot",
                        help="comma-separated; NAME=CHECKOUT adds qmailtx from another "
                        "checkout (e.g. before=/tmp/old) as one more column")
    parser.add_argument("--json", help="where to save the record (default: bench/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 4.0
    if os.getuid() != 0:
        sys.exit("bench.pop3: run as root")
    starters = dict(STARTERS)
    names = []
    for entry in filter(None, args.peers.split(",")):
        name, _, checkout = entry.partition("=")
        if checkout:
            starters[name] = functools.partial(startQmailtx, repo=os.path.abspath(checkout),
                                               name=name)
        names.append(name)
    work = tempfile.mkdtemp(prefix="qmailtx-bench-pop3-")
    os.chmod(work, 0o755)
    samples = {row.key: {} for row in ROWS}
    began = time.monotonic()
    try:
        uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
        homes = makeMaildirs(work, uid, gid)
        checker = os.path.join(work, "checkpassword")
        with open(checker, "w") as f:
            f.write(CHECKER.replace("@HOMES@", homes).replace("@UID@", str(uid))
                    .replace("@GID@", str(gid)))
        os.chmod(checker, 0o755)
        for n in range(args.rounds):
            order = names[n % len(names):] + names[:n % len(names)]
            sys.stderr.write(f"round {n + 1}/{args.rounds}: {', '.join(order)}\n")
            for name in order:
                measureRound(name, starters[name], work, homes, checker, args, samples)
        for name in names:
            measureMemory(name, starters[name], work, checker, args, samples)
    finally:
        if args.keep:
            sys.stderr.write(f"kept {work}\n")
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - began, 1)
    results, rows = [], []
    for row in ROWS:
        summary = report.summarize(row, samples[row.key])
        results.append((row, samples[row.key], summary))
        rows.append((row.label, row.unit, summary))
    print(report.table(rows, names))
    print(f"\nmedians of {args.rounds} round(s); ratios are qmailtx/peer (for ms, "
          f"below 1 is faster); paired ratios: "
          + ", ".join(f"{row.key} {report.pairedRatios(samples[row.key]).get('dovecot', 0):.3g}"
                      for row in ROWS) + f"; {seconds} s")
    env = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "rounds": args.rounds,
           "seconds": seconds}
    record = report.record(env, vars(args), names, results)
    path = args.json or os.path.join(REPO, "bench", "results", "pop3-" + datetime.datetime
                                     .now().strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"saved {path}")
    return samples


if __name__ == "__main__":
    main()
