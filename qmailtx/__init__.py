"""qmailtx: qmail's mail system (qmail-smtpd, qmail-queue, qmail-send, ...) as Twisted services."""

__version__ = "0.1.0"
