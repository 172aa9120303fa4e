"""
A live `twistd qmail` on 127.0.0.1 driven by smtplib and raw sockets: messages land in
qmail's queue, rules decide relaying, limits hold (spec/smtp.md, spec/rules.md, queue.md §2).
"""

import glob
import os
import smtplib
import socket
import time

import pytest

from tests.service.daemon import Daemon


@pytest.fixture(autouse=True)
def holdDeliveries(qmailRoot):
    """
    Both channels on hold (concurrency 0, as in qmail): the queue manager preprocesses
    todo/ but delivers nothing, so accepted messages stay to be inspected and no test
    daemon looks up a remote host.
    """
    for name in ("concurrencylocal", "concurrencyremote"):
        (qmailRoot / "control" / name).write_text("0\n")


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def queued(root, settle=5.0):
    """
    {msgid: (mess bytes, envelope)} for every message in the queue, whether still in
    todo/ or already preprocessed into info/local/remote; the envelope is rebuilt as
    C{F<sender>\0T<recipient>\0...} in either case.
    """
    deadline = time.time() + settle
    while glob.glob(os.path.join(root, "queue", "intd", "*")) and time.time() < deadline:
        time.sleep(0.05)
    out = {}
    for path in glob.glob(os.path.join(root, "queue", "mess", "*", "*")):
        msgid = int(os.path.basename(path))
        part = str(msgid % 23)
        todo = _read(os.path.join(root, "queue", "todo", str(msgid)))
        if todo is None:
            info = _read(os.path.join(root, "queue", "info", part, str(msgid)))
            if info is None:
                continue
            todo = info + b"".join(_read(os.path.join(root, "queue", chan, part, str(msgid))) or b""
                                   for chan in ("local", "remote"))
        out[msgid] = (_read(path), todo)
    return out


def envelopeOf(todo):
    """(sender, recipients) from a todo file or info+local+remote records."""
    records = todo.split(b"\0")
    sender = next(r[1:] for r in records if r.startswith(b"F"))
    return sender, [r[1:] for r in records if r.startswith(b"T")]


class RawClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def test_smtplib_message_lands_in_queue(daemon, qmailRoot):
    """A message sent with smtplib is in todo/ with qmail's two Received lines and envelope."""
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example") as s:
        code, banner = s.ehlo()
        assert code == 250 and b"PIPELINING" in banner and b"8BITMIME" in banner
        s.sendmail("joe@example.net", ["postmaster@mx.example.com", "bob@elsewhere.org"],
                   b"Subject: hello\r\n\r\nbody\r\n..dot\r\n")
    (mess, todo), = queued(str(qmailRoot)).values()
    assert mess.startswith(b"Received: (qmail ")
    assert b" invoked from network); " in mess.split(b"\n", 1)[0]
    second = mess.split(b"\n", 1)[1]
    assert second.startswith(b"Received: from unknown (HELO client.example) (127.0.0.1)\n"
                             b"  by 127.0.0.1 with SMTP; ")
    assert mess.endswith(b"\nSubject: hello\n\nbody\n..dot\n")  # smtplib stuffed it
    assert envelopeOf(todo) == (b"joe@example.net",
                                [b"postmaster@mx.example.com", b"bob@elsewhere.org"])


def test_250_reply_format(daemon):
    """250 ok <unix time> qp <qp>, the time being now."""
    c = RawClient(daemon.port)
    assert c.line() == b"220 mx.example.com ESMTP"
    c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\n")
    assert [c.line() for _ in range(3)] == [b"250 ok", b"250 ok", b"354 go ahead"]
    c.send(b"hi\r\n.\r\n")
    words = c.line().split()
    assert words[:2] == [b"250", b"ok"] and words[3] == b"qp"
    assert abs(int(words[2]) - time.time()) < 5
    c.close()


def test_relay_refused_without_rules(qmailRoot):
    """A client that no rule gives RELAYCLIENT cannot relay (rules file: deny-free, no relay)."""
    rules = qmailRoot / "rules" / "smtp"
    rules.write_text(":allow\n")
    with Daemon(qmailRoot) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo()
            s.mail("a@b")
            assert s.rcpt("x@elsewhere.org")[0] == 553
            assert s.rcpt("x@mx.example.com")[0] == 250


def test_relay_allowed_by_rules_and_appended(qmailRoot):
    """RELAYCLIENT from a rule allows relaying and its value is appended."""
    (qmailRoot / "rules" / "smtp").write_text('127.0.0.1:allow,RELAYCLIENT="@fixme"\n:allow\n')
    with Daemon(qmailRoot) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.sendmail("a@b", ["x@elsewhere.org"], b"\r\nhi\r\n")
    (_, todo), = queued(str(qmailRoot)).values()
    assert envelopeOf(todo)[1] == [b"x@elsewhere.org@fixme"]


def test_deny_rule_closes_silently(qmailRoot):
    """A deny rule closes the connection without a byte written."""
    (qmailRoot / "rules" / "smtp").write_text("127.0.0.1:deny\n")
    with Daemon(qmailRoot) as d:
        c = RawClient(d.port)
        assert c.closed()


def test_rules_reread_without_restart(qmailRoot):
    """Editing the rules file changes the next connection's treatment."""
    rules = qmailRoot / "rules" / "smtp"
    with Daemon(qmailRoot) as d:
        c = RawClient(d.port)
        assert c.line().startswith(b"220 ")
        c.close()
        rules.write_text("127.0.0.1:deny\n")
        st = os.stat(rules)
        os.utime(rules, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        time.sleep(1.2)
        c = RawClient(d.port)
        assert c.closed()


def test_cdb_rules_from_tcprules(qmailRoot, tmp_path):
    """A cdb compiled by `qmailtx tcprules` works as the listener's rules."""
    import subprocess
    import sys

    src = tmp_path / "smtp.rules"
    src.write_text('127.:allow,RELAYCLIENT=""\n:deny\n')
    cdb = tmp_path / "smtp.cdb"
    with open(src, "rb") as f:
        subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", "tcprules", str(cdb),
                        str(tmp_path / "smtp.tmp")], stdin=f, check=True)
    with Daemon(qmailRoot, extra=["--rules", f"smtp={cdb}"]) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo()
            s.mail("a@b")
            assert s.rcpt("x@elsewhere.org")[0] == 250


@pytest.mark.parametrize("payload", [
    b"x\r\n.\nRCPT TO:<evil@elsewhere.org>\r\n",
    b"x\n.\nRCPT TO:<evil@elsewhere.org>\r\n",
    b"x\n.\r\nRCPT TO:<evil@elsewhere.org>\r\n",
    b"x\r.\rRCPT TO:<evil@elsewhere.org>\r\n",
])
def test_smuggling_vectors_close_with_451(daemon, qmailRoot, payload):
    """Each smuggling vector gets qmail's bare-LF 451, the connection closes, nothing is queued."""
    c = RawClient(daemon.port)
    c.line()
    c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\n")
    [c.line() for _ in range(3)]
    c.send(payload + b".\r\nQUIT\r\n")
    assert c.line() == b"451 See https://cr.yp.to/docs/smtplf.html."
    assert c.closed()
    assert queued(str(qmailRoot)) == {}


def test_dot_dot_lines_are_data_not_commands(daemon, qmailRoot):
    """'..' lines and a command-looking line inside DATA stay message text."""
    c = RawClient(daemon.port)
    c.line()
    c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\n"
           b"x\r\n..\r\nRCPT TO:<evil@elsewhere.org>\r\n.\r\nQUIT\r\n")
    lines = [c.line() for _ in range(5)]
    assert lines[3].startswith(b"250 ok ") and lines[4] == b"221 mx.example.com"
    (mess, todo), = queued(str(qmailRoot)).values()
    assert mess.endswith(b"\nx\n.\nRCPT TO:<evil@elsewhere.org>\n")
    assert envelopeOf(todo)[1] == [b"postmaster@mx.example.com"]


def test_huge_line_and_garbage(daemon):
    """Garbage gets 502; a command line far over the limit gets 500 and a close."""
    c = RawClient(daemon.port)
    c.line()
    c.send(b"\x00\x01\x02 junk\r\n")
    assert c.line() == b"502 unimplemented (#5.5.1)"
    c.send(b"NOOP " + b"A" * 100000 + b"\r\n")
    assert c.line() == b"500 command line too long (#5.5.2)"
    assert c.closed()


def test_large_message_streams(daemon, qmailRoot):
    """A 20 MB message with 1 MB lines is queued intact."""
    line = b"y" * (1024 * 1024)
    c = RawClient(daemon.port)
    c.line()
    c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\n")
    [c.line() for _ in range(3)]
    for _ in range(20):
        c.send(line + b"\r\n")
    c.send(b".\r\n")
    assert c.line().startswith(b"250 ok ")
    (mess, _), = queued(str(qmailRoot)).values()
    assert mess.count(line + b"\n") == 20


def test_maxconn_holds_extra_clients_in_backlog(qmailRoot):
    """At --maxconn the listener stops accepting: the next client gets no banner until a slot frees."""
    with Daemon(qmailRoot, extra=["--maxconn", "smtp=2"]) as d:
        a, b = RawClient(d.port), RawClient(d.port)
        assert a.line().startswith(b"220") and b.line().startswith(b"220")
        c = RawClient(d.port)
        c.sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            c.line()
        a.send(b"QUIT\r\n")
        a.line()
        c.sock.settimeout(10)
        assert c.line().startswith(b"220")


def test_maxperip(qmailRoot):
    """Over --maxperip, a client gets SMTP's 421 and is closed."""
    with Daemon(qmailRoot, extra=["--maxperip", "smtp=1"]) as d:
        time.sleep(0.5)  # let the daemon see the start-up probe connection close
        a = RawClient(d.port)
        assert a.line().startswith(b"220")
        b = RawClient(d.port)
        assert b.line() == b"421 too many connections from your address (#4.3.2)"
        assert b.closed()


def test_stalled_client_does_not_block_others(daemon):
    """A client that stops mid-DATA does not stop another session."""
    stalled = RawClient(daemon.port)
    stalled.line()
    stalled.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<postmaster@mx.example.com>\r\nDATA\r\npartial")
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.sendmail("a@b", ["postmaster@mx.example.com"], b"\r\nhi\r\n")


def test_log_lines(daemon):
    """The daemon logs qmail-send's new msg / info msg lines for an accepted message."""
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.sendmail("joe@example.net", ["postmaster@mx.example.com"], b"\r\nhi\r\n")
    deadline = time.time() + 5
    while time.time() < deadline and "info msg" not in daemon.log():
        time.sleep(0.1)
    log = daemon.log()
    assert "new msg " in log
    assert "from <joe@example.net> qp " in log


def queueProgram(qmailRoot, tmp_path, script):
    """A QMAILQUEUE program running C{script} (sh), set for 127.0.0.1 by the smtp rules."""
    program = tmp_path / "qq"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    (qmailRoot / "rules" / "smtp").write_text(
        f'127.0.0.1:allow,RELAYCLIENT="",QMAILQUEUE="{program}"\n')
    return program


def smtpAtData(port):
    """An smtplib session past EHLO, MAIL and RCPT, ready for DATA."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.ehlo()
    s.mail("a@b")
    s.rcpt("c@d")
    return s


def test_QMAILQUEUE_from_rules(qmailRoot, tmp_path):
    """A rules entry's QMAILQUEUE makes the listener hand the message to that program
    (message on fd 0, envelope on fd 1), as netqmail's qmail-smtpd does."""
    out = tmp_path / "qq-out"
    program = tmp_path / "qq"
    program.write_text(f"#!/bin/sh\ncat > {out}.mess\ncat <&1 > {out}.env\nexit 0\n")
    program.chmod(0o755)
    (qmailRoot / "rules" / "smtp").write_text(
        f'127.0.0.1:allow,RELAYCLIENT="",QMAILQUEUE="{program}"\n')
    with Daemon(qmailRoot) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.sendmail("a@b.example", ["c@d.example"], b"Subject: via qq\r\n\r\nhi\r\n")
    mess = (tmp_path / "qq-out.mess").read_bytes()
    assert mess.startswith(b"Received: from unknown ")
    assert mess.endswith(b"\nSubject: via qq\n\nhi\n")
    assert (tmp_path / "qq-out.env").read_bytes() == b"Fa@b.example\0Tc@d.example\0\0"
    assert queued(str(qmailRoot)) == {}


def test_QMAILQUEUE_failure_texts(qmailRoot, tmp_path):
    """The program's exit code becomes qmail's text: 31 permanent (554), 53 temporary (451)."""
    program = tmp_path / "qq"
    (qmailRoot / "rules" / "smtp").write_text(
        f'127.0.0.1:allow,RELAYCLIENT="",QMAILQUEUE="{program}"\n')
    with Daemon(qmailRoot) as d:
        for code, reply in ((31, (554, b"mail server permanently rejected message (#5.3.0)")),
                            (53, (451, b"qq write error or disk full (#4.3.0)"))):
            program.write_text(f"#!/bin/sh\ncat >/dev/null\nexit {code}\n")
            program.chmod(0o755)
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.ehlo()
                s.mail("a@b")
                s.rcpt("c@d")
                assert s.data(b"hi\r\n") == reply


def test_QMAILQUEUE_thatStopsReadingStillGetsItsAnswer(qmailRoot, tmp_path):
    """
    A queue program that refuses after reading only the start of a large message (a filter)
    closes its end of the pipe early: the session still reads up to the dot and answers from
    the program's exit code, instead of dropping the client, which would then retry.
    """
    queueProgram(qmailRoot, tmp_path, "head -c 5 >/dev/null\nexit 31\n")
    with Daemon(qmailRoot) as d:
        with smtpAtData(d.port) as s:
            assert s.data(b"Subject: x\r\n\r\n" + b"body line\r\n" * 20000) == \
                (554, b"mail server permanently rejected message (#5.3.0)")
            assert s.noop() == (250, b"ok")


def test_QMAILQUEUE_largeMessageRefusedBeforeCommitKeepsTheSession(qmailRoot, tmp_path):
    """
    A message refused at its end (too many hops) after it filled the program's pipe: the
    session reads on (the pipe's backlog no longer holds the socket) and answers the next
    command.
    """
    queueProgram(qmailRoot, tmp_path, "cat >/dev/null\ncat <&1 >/dev/null\nexit 0\n")
    with Daemon(qmailRoot) as d:
        with smtpAtData(d.port) as s:
            assert s.data(b"Received: x\r\n" * 100 + b"\r\n" + b"b" * 200000 + b"\r\n") == \
                (554, b"too many hops, this message is looping (#5.4.6)")
            assert s.noop() == (250, b"ok")


def test_queueProgramThatCannotBeExecuted(qmailRoot, tmp_path):
    """A QMAILQUEUE program that cannot be executed is qmail-queue's exit 120 after the dot:
    354, the body read as a message (a command in it is never run), then 451 unable to exec
    qq, and the transaction is over.  (451 qqt failure is for a queue that cannot be started
    at all, as qmail-smtpd's failed pipe or fork: tests/protocol/test_smtp.py.)"""
    (qmailRoot / "rules" / "smtp").write_text(
        f'127.0.0.1:allow,RELAYCLIENT="",QMAILQUEUE="{tmp_path / "missing"}"\n')
    with Daemon(qmailRoot) as d:
        c = RawClient(d.port)
        assert c.line() == b"220 mx.example.com ESMTP"
        for command, reply in ((b"MAIL FROM:<a@b.example>", b"250 ok"),
                               (b"RCPT TO:<c@d.example>", b"250 ok"),
                               (b"DATA", b"354 go ahead"),
                               (b"RCPT TO:<e@f.example>\r\n.", b"451 unable to exec qq (#4.3.0)"),
                               (b"DATA", b"503 MAIL first (#5.5.1)")):
            c.send(command + b"\r\n")
            assert c.line() == reply, command
        c.close()


def test_starttlsWithoutCertificateIsUnimplemented(qmailRoot):
    """No control/servercert.pem: EHLO offers no STARTTLS and the verb is 502, as qmail's."""
    os.unlink(qmailRoot / "control" / "servercert.pem")
    with Daemon(qmailRoot) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            code, text = s.ehlo()
            assert code == 250 and b"STARTTLS" not in text
            assert s.docmd("STARTTLS") == (502, b"unimplemented (#5.5.1)")


def test_localiphostNamesBracketedLocalAddresses(qmailRoot):
    """
    A recipient at a bracketed address of this host is rewritten to localiphost (default
    me) in the envelope; a foreign one stays as written.
    """
    (qmailRoot / "control" / "localiphost").write_text("local.example\n")
    (qmailRoot / "rules" / "smtp").write_text('127.0.0.1:allow,RELAYCLIENT=""\n')
    with Daemon(qmailRoot) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.sendmail("a@b.example", ["u@[127.0.0.1]", "v@[192.0.2.9]"], b"Subject: x\r\n\r\nx\r\n")
        [(_, todo)] = queued(str(qmailRoot)).values()
    assert sorted(envelopeOf(todo)[1]) == [b"u@local.example", b"v@[192.0.2.9]"], todo


def test_QMAILQUEUE_seesEndOfInputAfterATimeout(qmailRoot, tmp_path):
    """
    A session that times out while the program's pipe is backed up: the program, once it
    reads again, still gets end of input (and, without an envelope, gives up as qmail-queue
    does) instead of waiting on the pipe for ever.
    """
    done = tmp_path / "eof"
    queueProgram(qmailRoot, tmp_path, f"sleep 2\ncat >/dev/null\ntouch {done}\nexit 54\n")
    (qmailRoot / "control" / "timeoutsmtpd").write_text("1\n")
    with Daemon(qmailRoot) as d:
        c = RawClient(d.port)
        assert c.line() == b"220 mx.example.com ESMTP"
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        assert [c.line(), c.line(), c.line()] == [b"250 ok", b"250 ok", b"354 go ahead"]
        c.sock.settimeout(10)
        try:
            c.sock.sendall((b"x" * 78 + b"\r\n") * 5000)
        except OSError:
            pass
        deadline = time.monotonic() + 15
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        c.close()
        assert done.exists(), "the queue program never saw the end of its input"


def test_control_edit_reaches_next_connection(daemon, qmailRoot):
    """Controls are re-read for new connections (as qmail-smtpd per connection), no restart."""
    c = RawClient(daemon.port)
    assert c.line() == b"220 mx.example.com ESMTP"
    c.close()
    (qmailRoot / "control" / "smtpgreeting").write_text("mx.example.com changed greeting\n")
    time.sleep(1.2)
    c = RawClient(daemon.port)
    assert c.line() == b"220 mx.example.com changed greeting ESMTP"
    c.close()


def test_rulesFileMadeAfterStart(qmailRoot):
    """
    With no --rules, a listener looks for ROOT/rules/smtp.cdb, else ROOT/rules/smtp, as it
    runs: a rules file written after start-up applies, and a cdb compiled from it by
    tcprules takes over from the text, without a restart.
    """
    import subprocess
    import sys

    from tests.service.daemon import REPO

    os.unlink(qmailRoot / "rules" / "smtp")

    def greeting(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(100)

    def waitFor(port, predicate):
        deadline = time.monotonic() + 10
        while True:
            got = greeting(port)
            if predicate(got) or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    with Daemon(qmailRoot) as d:
        assert greeting(d.port).startswith(b"220 ")
        (qmailRoot / "rules" / "smtp").write_bytes(b"127.0.0.1:deny\n")
        assert waitFor(d.port, lambda g: g == b"") == b""
        subprocess.run([sys.executable, "-m", "qmailtx.scripts.main", "tcprules",
                        str(qmailRoot / "rules" / "smtp.cdb"), str(qmailRoot / "rules" / "t")],
                       input=b"127.0.0.1:allow\n", check=True,
                       env=dict(os.environ, PYTHONPATH=REPO))
        assert waitFor(d.port, lambda g: g != b"").startswith(b"220 ")
