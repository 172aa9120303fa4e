"""
An aiosmtpd server whose handler stores each message in a maildir before its 250.

Usage: python aiosmtpd_server.py PORT MAILDIR

The write is qmail's maildir protocol: tmp/NAME, fsync, rename into new/.  It runs in a thread
(C{asyncio.to_thread}) so that one session's fsync does not stall the others, which is the fast
way to write this handler, not a straw man.  Listens on 127.0.0.1 only.  Writes only MAILDIR.
"""

import asyncio
import itertools
import logging
import os
import socket
import sys

from aiosmtpd.smtp import SMTP

#: Largest message accepted, as Postfix's default message_size_limit.
DATA_SIZE_LIMIT = 10240000
#: listen(2) backlog; the kernel caps it at net.core.somaxconn.
BACKLOG = 1024


class MaildirHandler:
    """
    Store every message as one maildir file; answer 250 only once it is on disk.
    """

    def __init__(self, maildir):
        self.maildir = maildir
        self.sequence = itertools.count()
        self.host = socket.gethostname()
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)

    def deliver(self, content):
        name = f"{os.getpid()}.{next(self.sequence)}.{self.host}"
        tmp = os.path.join(self.maildir, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.maildir, "new", name))

    async def handle_DATA(self, server, session, envelope):
        await asyncio.to_thread(self.deliver, envelope.original_content)
        return "250 OK"


async def serve(port, maildir):
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench.local", data_size_limit=DATA_SIZE_LIMIT),
        host="127.0.0.1", port=port, backlog=BACKLOG)
    async with server:
        await server.serve_forever()


def main(argv):
    logging.basicConfig(level=logging.WARNING)
    port, maildir = int(argv[1]), argv[2]
    try:
        asyncio.run(serve(port, maildir))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
