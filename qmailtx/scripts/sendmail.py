"""
C{qmailtx sendmail [--root DIR] [-t] [-f sender] [-F name] [-bp|-bs|-bm] [-i ...] [--] recip ...}:
qmail's sendmail wrapper (spec/tools.md §2).

Turns sendmail's flags into a qmail-inject run (C{-a}, or C{-H} with C{-t}; C{-f}), with
the environment qmail's wrapper sets, and runs L{qmailtx.scripts.inject} in this process;
C{-bp} (or the name C{mailq}) runs qmail-qread, C{-bs} qmail-smtpd's dialogue on
stdin/stdout.  The root is a leading C{--root DIR}, else C{$QMAILHOME},
else C{./qmail-root}.  Writes nothing itself.
"""

import os
import sys

from qmailtx.scripts import inject
from qmailtx.scripts.common import GetoptError, getopt

USAGE = b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]\n"
SPEC = "vimte:f:p:o:B:F:EJxb:"
"""sendmail's getopt letters; C{-E} and C{-J} (Sony NEWS-OS) swallow the rest of their word."""

SMTP_ENV = {b"RELAYCLIENT": b"", b"DATABYTES": b"0", b"PROTO": b"TCP",
            b"TCPLOCALIP": b"127.0.0.1", b"TCPLOCALHOST": b"localhost",
            b"TCPREMOTEIP": b"127.0.0.1", b"TCPREMOTEHOST": b"localhost",
            b"TCPREMOTEINFO": b"sendmail-bs"}
"""What C{-bs} puts in the environment when C{PROTO} is unset (spec/smtp.md §10)."""


def _fatal(text, code=111):
    sys.stderr.buffer.write(b"sendmail: fatal: " + text + b"\n")
    sys.stderr.flush()
    return code


def _usage():
    sys.stderr.buffer.write(USAGE)
    sys.stderr.flush()
    return 100


def senderEnvironment(environ, sender):
    """
    netqmail's do_sender: drop the name and host variables, then set C{QMAILUSER} and
    C{QMAILHOST} from C{sender} (split at its last C{@}) so the From field matches it.
    """
    for name in (b"QMAILNAME", b"MAILNAME", b"NAME", b"QMAILHOST", b"MAILHOST"):
        environ.pop(name, None)
    user, at, host = sender.rpartition(b"@")
    if not at:
        environ[b"QMAILUSER"] = sender
        return
    environ[b"QMAILHOST"] = host
    environ[b"QMAILUSER"] = user


def injectArguments(headerRecipients, sender, recipients):
    """The qmail-inject command line sendmail runs: C{-a} or C{-H}, C{-f}, C{--}, recipients."""
    argv = ["qmail-inject", "-H" if headerRecipients else "-a"]
    if sender is not None:
        argv += ["-f", sender]
    return argv + ["--"] + list(recipients)


def optionsBefore(args):
    """
    The options of the words before the one getopt fails on.  qmail's sendmail acts on
    each option as getopt returns it, so a C{-bp} or C{-bs} ahead of a bad flag still
    runs (C{mailq -bp -z} lists the queue); only C{-b} acts at once, and it always ends
    its word, so whole words are enough.
    """
    for end in range(len(args) - 1, -1, -1):
        try:
            return getopt(args[:end], SPEC, swallow="EJ")[0]
        except GetoptError:
            continue
    return []


def mailq(root):
    from qmailtx.scripts import qread
    return qread.main(["qread", "--root", root])


def smtpd(root, environ):
    """
    qmail-smtpd's dialogue on stdin/stdout (C{-bs}); every message goes through the
    queue program, as qmail-smtpd's do, so it is queued C{by uid N} or handed to QMQP.
    """
    if b"PROTO" not in environ:
        environ.update(SMTP_ENV)
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    from qmailtx.control import ControlDir
    from qmailtx.qqprogram import ProgramQueue
    from qmailtx.scripts.deliverworker import defaultQueueCommand
    from qmailtx.smtpfactory import SMTPFactory

    env = {os.fsdecode(k): os.fsdecode(v) for k, v in environ.items()}
    command = [os.fsencode(environ[b"QMAILQUEUE"])] if environ.get(b"QMAILQUEUE") \
        else defaultQueueCommand()
    queue = ProgramQueue(command[0], root, env, reactor, args=command)
    factory = SMTPFactory(ControlDir(os.path.join(root, "control")), queue, reactor)
    protocol = factory.buildProtocol(None)
    protocol.env = env
    protocol.connectionLost = _stopAfter(protocol.connectionLost, reactor)
    StandardIO(protocol, reactor=reactor)
    reactor.run()
    return 0


def _stopAfter(connectionLost, reactor):
    def lost(reason):
        try:
            connectionLost(reason)
        finally:
            reactor.callLater(0, reactor.stop)
    return lost


def run(argv, environ):
    """sendmail with C{environ} (bytes to bytes, changed in place); the exit code."""
    progname = os.path.basename(argv[0])
    args = list(argv[1:])
    root = inject.takeRoot(args, environ)
    if not os.path.isdir(root):
        return _fatal(b"unable to switch to qmail home directory")
    try:
        options, rest = getopt(args, SPEC, swallow="EJ")
        error = None
    except GetoptError as e:
        options, rest, error = optionsBefore(args), [], e
    headerRecipients, sender = False, None
    for letter, value in options:
        if letter == "t":
            headerRecipients = True
        elif letter == "f":
            sender = value
        elif letter == "F":
            environ[b"MAILNAME"] = os.fsencode(value)
        elif letter == "b":
            mode = value[:1]
            if mode == "p":
                return mailq(root)
            if mode == "s":
                return smtpd(root, environ)
            if mode != "m":
                return _usage()
    if error is not None:
        sys.stderr.write(progname + ": " + str(error) + "\n")
        return _usage()
    if progname == "mailq":
        return mailq(root)
    if progname == "newaliases":
        return _fatal(b"please use fastforward/newaliases instead", 100)
    if sender is not None:
        senderEnvironment(environ, os.fsencode(sender))
    argv = injectArguments(headerRecipients, sender, rest)
    return inject.run([argv[0], "--root", root] + argv[1:], environ)


def main(argv):
    return run(argv, dict(os.environb))
