"""
An isolated Postfix instance (the Debian package), queue only.

Its own config_directory (copies of the system's main.cf and master.cf, edited with
C{postconf -c}), queue_directory and data_directory live in the peer directory; the system's
instance, port 25 and /var/spool/postfix are never touched.  The only inet service is smtpd on
127.0.0.1:PORT.  Every message is put on hold (C{smtpd_data_restrictions = check_client_access
static:HOLD}): cleanup writes and fsyncs the queue file into hold/ before smtpd says 250, and
qmgr never sees it, so what is measured is acceptance, as for qmailtx.  (Disabling qmgr instead
costs a one-second stall per message: cleanup then fails to notify it.)

STARTTLS is offered with a P-256 certificate made here, like the one C{qmailtx init} makes,
for the TLS rows.

Needs root (Postfix's master starts as root and runs its daemons as the postfix user).
"""

import os
import shutil
import subprocess
from pathlib import Path

from bench.peers import BENCH_DOMAIN, STOP_TIMEOUT, Peer, countFiles, registerPeer

#: Where the starting main.cf and master.cf are copied from: the system's, else the package's
#: templates (a "No configuration" install may leave /etc/postfix without them).
TEMPLATES = {
    "main.cf": [Path("/etc/postfix/main.cf"), Path("/usr/share/postfix/main.cf.debian")],
    "master.cf": [Path("/etc/postfix/master.cf"), Path("/usr/share/postfix/master.cf.dist")],
}
#: Enough smtpd processes for the 2,000 idle connections and then some.
PROCESS_LIMIT = 2500

SETTINGS = {
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "myhostname": BENCH_DOMAIN,
    "mydomain": BENCH_DOMAIN,
    "myorigin": BENCH_DOMAIN,
    "mydestination": BENCH_DOMAIN,
    "mynetworks": "127.0.0.0/8",
    "relayhost": "",
    "local_recipient_maps": "",
    "alias_maps": "",
    "alias_database": "",
    "smtpd_banner": "$myhostname ESMTP",
    "smtpd_peername_lookup": "no",
    "smtpd_data_restrictions": "check_client_access static:HOLD",
    "smtpd_client_connection_count_limit": "0",
    "smtpd_client_connection_rate_limit": "0",
    "smtpd_client_message_rate_limit": "0",
    "default_process_limit": str(PROCESS_LIMIT),
    "biff": "no",
    "compatibility_level": "3.6",
}


@registerPeer
class PostfixPeer(Peer):
    name = "postfix"
    description = "Postfix (Debian), isolated instance, smtpd -> cleanup -> hold queue"

    def missing(self):
        if os.geteuid() != 0:
            return "Postfix's master must start as root"
        for program in ("postfix", "postconf"):
            if shutil.which(program) is None:
                return f"{program} not installed (run bench/setup.sh)"
        for name, candidates in TEMPLATES.items():
            if not any(p.exists() for p in candidates):
                return f"no {name} to start from (looked for {', '.join(map(str, candidates))})"
        return None

    def version(self):
        return subprocess.run(["postconf", "-h", "mail_version"],
                              capture_output=True, text=True).stdout.strip()

    def _postconf(self, *args):
        subprocess.run(["postconf", "-c", str(self.config), *args], check=True,
                       capture_output=True)

    def prepare(self, port):
        self.config = self.directory / "conf"
        self.spool = self.directory / "spool"
        data = self.directory / "data"
        for d in (self.config, self.spool, data):
            d.mkdir()
        shutil.chown(data, "postfix", "postfix")
        for name, candidates in TEMPLATES.items():
            shutil.copy(next(p for p in candidates if p.exists()), self.config / name)
        settings = dict(SETTINGS, queue_directory=str(self.spool), data_directory=str(data),
                        maillog_file=str(self.directory / "maillog"),
                        maillog_file_prefixes=str(self.directory))
        tlsChain = self.directory / "tls.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj",
                        f"/CN={BENCH_DOMAIN}", "-keyout", str(tlsChain), "-out",
                        str(self.directory / "cert.pem")], check=True, capture_output=True)
        with open(tlsChain, "ab") as chain:
            chain.write((self.directory / "cert.pem").read_bytes())
        settings.update(smtpd_tls_security_level="may", smtpd_tls_chain_files=str(tlsChain))
        self._postconf("-e", *(f"{k}={v}" for k, v in settings.items()))
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-M#", "smtp/inet")
        self._postconf("-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")

    def command(self, port):
        return ["postfix", "-c", str(self.config), "start-fg"], None

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            subprocess.run(["postfix", "-c", str(self.config), "stop"], capture_output=True,
                           timeout=STOP_TIMEOUT)
        Peer.stop(self)

    def storedCount(self):
        return countFiles(self.spool / "hold") + countFiles(self.spool / "incoming")
