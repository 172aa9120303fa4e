"""
C{twistd qmail --pop3 ... --pop3s ... --checkpassword PROGRAM}: the listeners come up behind
the rules layer and serve a maildir end to end (as root: through an owner worker).
"""

import os
import pathlib
import poplib
import signal
import tempfile
import time

from qmailtx import maildir
from tests.service import pop3_support as S
from tests.service.daemon import Daemon

NOBODY = 65534


def test_twistdPop3AndPop3s(qmailRoot, tmp_path):
    """--pop3 (with STLS from control/servercert.pem) and --pop3s log in via an external checkpassword and delete mail."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="qmailtx-pop3t-"))
    os.chmod(base, 0o755)
    checker = S.makeChecker(str(base), {"joe": "secret"})
    home = base / "home" / "joe"
    home.mkdir(parents=True)
    md = home / "Maildir"
    maildir.maildirmake(str(md))
    S.addMessage(str(md), "new", "1.a.host", b"Subject: a\n\nbody\n", age=30)
    S.addMessage(str(md), "new", "2.b.host", b"Subject: b\n\nbody\n", age=20)
    if os.getuid() == 0:
        (home / ".uid").write_text(str(NOBODY))
        for root, dirs, files in os.walk(home):
            for n in [root] + [os.path.join(root, f) for f in files]:
                os.chown(n, NOBODY, NOBODY)
    if not (qmailRoot / "control" / "servercert.pem").exists():
        (qmailRoot / "control" / "servercert.pem").write_bytes(open(S.certificate(), "rb").read())
    d = Daemon(qmailRoot, listeners=("pop3", "pop3s"), extra=["--checkpassword", checker])
    d.start()
    try:
        p = poplib.POP3("127.0.0.1", d.ports["pop3"], timeout=20)
        assert "STLS" in p.capa()
        p.stls(S.clientContext())
        p.user("joe")
        p.pass_("secret")
        assert p.stat() == (2, 2 * len(b"Subject: a\n\nbody\n"))
        p.dele(1)
        p.quit()
        s = poplib.POP3_SSL("127.0.0.1", d.ports["pop3s"], timeout=20, context=S.clientContext())
        s.user("joe")
        s.pass_("secret")
        assert s.uidl()[1] == [b"1 2.b.host"]
        s.quit()
    finally:
        d.stop()
    assert os.listdir(md / "new") == []
    try:
        assert os.listdir(md / "cur") == ["2.b.host:2,"]
    finally:
        S.removeTree(str(base))


def test_quitAnsweredThroughAStop(qmailRoot):
    """
    A SIGTERM that arrives while QUIT's UPDATE deletes a large mailbox lets it finish and
    answer +OK before the daemon drops the connection: a client not told its QUIT succeeded
    fetches the messages again at its next visit.
    """
    count = 3000
    base = pathlib.Path(tempfile.mkdtemp(prefix="qmailtx-pop3q-"))
    os.chmod(base, 0o755)
    try:
        checker = S.makeChecker(str(base), {"joe": "secret"})
        home = base / "home" / "joe"
        home.mkdir(parents=True)
        md = home / "Maildir"
        maildir.maildirmake(str(md))
        for i in range(count):
            S.addMessage(str(md), "new", f"{i}.x.host", b"Subject: x\n\nbody\n", age=30)
        if os.getuid() == 0:
            (home / ".uid").write_text(str(NOBODY))
            for root, dirs, files in os.walk(home):
                for n in [root] + [os.path.join(root, f) for f in files]:
                    os.chown(n, NOBODY, NOBODY)
        d = Daemon(qmailRoot, listeners=("pop3",), extra=["--checkpassword", checker])
        d.start()
        try:
            r = S.Raw(d.ports["pop3"])
            r.line()
            assert r.cmd(b"USER joe").startswith(b"+OK")
            assert r.cmd(b"PASS secret").startswith(b"+OK")
            r.send(b"".join(b"DELE %d\r\n" % (i + 1) for i in range(count)))
            for _ in range(count):
                assert r.line().startswith(b"+OK")
            r.send(b"QUIT\r\n")
            deadline = time.monotonic() + 20
            while len(os.listdir(md / "new")) == count and time.monotonic() < deadline:
                time.sleep(0.001)  # until the UPDATE is under way
            d.process.send_signal(signal.SIGTERM)
            answer = r.line()
            r.close()
        finally:
            d.stop()
        assert answer.startswith(b"+OK"), (answer, d.log()[-2000:])
        assert os.listdir(md / "new") == [] and os.listdir(md / "cur") == []
    finally:
        S.removeTree(str(base))
