"""
Interop: Debian's fetchmail fetches and deletes mail over POP3S (implicit TLS) from a live
listener, authenticating through an external checkpassword script.  Needs the C{fetchmail}
package; under CI=1 its absence is a failure, elsewhere a skip.
"""

import os
import shutil
import subprocess
import tempfile

from twisted.internet import reactor, threads
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from qmailtx import maildir, pop3, pop3box
from tests.service import pop3_support as S


class FetchmailTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("fetchmail") is None:
            if os.environ.get("CI") == "1":
                self.fail("fetchmail is not installed (apt-get install fetchmail)")
            raise unittest.SkipTest("fetchmail not installed")
        self.dir = tempfile.mkdtemp(prefix="qmailtx-fetchmail-")
        self.addCleanup(S.removeTree, self.dir)
        checker = S.makeChecker(self.dir, {"joe": "secret"})
        os.makedirs(os.path.join(self.dir, "home", "joe"))
        self.md = os.path.join(self.dir, "home", "joe", "Maildir")
        maildir.maildirmake(self.md)
        S.addMessage(self.md, "new", "1.a.host", b"Subject: one\n\nfirst body\n", age=30)
        S.addMessage(self.md, "cur", "2.b.host:2,S", b"Subject: two\n\n.dot line\n", age=20)
        config = pop3.POP3Config(hostname=b"h", checkpassword=[checker.encode()],
                                 mailboxes=pop3box.LocalMailboxes(reactor), refuseRoot=False,
                                 tlsContext=pop3.serverTLSContext(S.certificate()))
        factory = TLSMemoryBIOFactory(config.tlsContext, False,
                                      pop3.POP3Factory(config, reactor, implicitTLS=True))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def test_fetchAndDelete(self):
        """fetchmail over POP3S retrieves both messages (dot-unstuffed) and deletes them on the server."""
        out = os.path.join(self.dir, "fetched")
        rc = os.path.join(self.dir, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                "set no syslog\n"
                f'poll 127.0.0.1 service {self.port.getHost().port} protocol POP3 timeout 20\n'
                '  user "joe" there with password "secret"\n'
                f"  options ssl no sslcertck fetchall no keep mda \"/bin/sh -c 'cat >> {out}'\"\n")
        os.chmod(rc, 0o600)
        env = {"PATH": "/usr/bin:/bin", "HOME": self.dir, "FETCHMAILHOME": self.dir}

        def run():
            return subprocess.run(["fetchmail", "--nodetach", "-f", rc, "--pidfile",
                                   os.path.join(self.dir, "pid")],
                                  env=env, capture_output=True, timeout=60)
        def check(result):
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            with open(out, "rb") as f:
                fetched = f.read()
            self.assertIn(b"first body\n", fetched)
            self.assertIn(b"\n.dot line\n", fetched)
            self.assertEqual(os.listdir(os.path.join(self.md, "new")), [])
            self.assertEqual(os.listdir(os.path.join(self.md, "cur")), [])
        return threads.deferToThread(run).addCallback(check)
