"""
aiosmtpd (PyPI) running L{bench.peers.aiosmtpd_server}: one asyncio process, a maildir handler
that fsyncs each message before its 250.  Writes only below its peer directory.
"""

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from bench.peers import Peer, countFiles, registerPeer

SERVER = Path(__file__).with_name("aiosmtpd_server.py")


@registerPeer
class AiosmtpdPeer(Peer):
    name = "aiosmtpd"
    description = "aiosmtpd SMTP + maildir handler (tmp/, fsync, rename to new/)"

    def missing(self):
        if importlib.util.find_spec("aiosmtpd") is None:
            return "aiosmtpd not installed (run bench/setup.sh)"
        return None

    def version(self):
        return importlib.metadata.version("aiosmtpd")

    def command(self, port):
        # -P: the script's directory holds this module, which would shadow aiosmtpd.
        return [sys.executable, "-P", str(SERVER), str(port), str(self.directory / "Maildir")], None

    def storedCount(self):
        return countFiles(self.directory / "Maildir" / "new")
