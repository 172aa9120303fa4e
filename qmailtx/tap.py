"""
C{twistd qmail} options.

Listener options take Twisted endpoint strings and may be repeated; with none at all the
embedded default listens for SMTP on 127.0.0.1:2525.  Per-service settings are written
C{SERVICE=VALUE}, the service being the listener's name (C{smtp}, C{qmtp}, ...).
"""

from twisted.python import usage

from qmailtx.rootdir import HOST_NAME_RULE, isHostName
from qmailtx.service import LISTENERS, makeQmailService

DEFAULT_ROOT = "./qmail-root"
DEFAULT_SMTP = "tcp:2525:interface=127.0.0.1"


def _serviceValue(option, value, convert=str):
    name, sep, rest = value.partition("=")
    if not sep or not name:
        raise usage.UsageError(f"--{option} takes SERVICE=VALUE, not {value!r}")
    if name not in LISTENERS:
        raise usage.UsageError(f"--{option}: unknown service {name!r} "
                               f"(known: {', '.join(sorted(LISTENERS))})")
    try:
        return name, convert(rest)
    except ValueError:
        raise usage.UsageError(f"--{option}: bad value {rest!r} for {name}")


def _count(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("qmail's mail system in one process.  With no options: root ./qmail-root "
                "(created on first run), SMTP on 127.0.0.1:2525.")

    optParameters = [
        ["root", None, DEFAULT_ROOT, "The qmail root (control/, queue/, ...); created if absent."],
        ["me", None, None, "Host name for control/me when the root is created."],
        ["checkpassword", None, None, "checkpassword program and arguments for POP3 and "
         "SMTP AUTH (split like a shell would), e.g. '/usr/bin/checkpassword-pam -s pop3'"],
        ["maildirname", None, "Maildir", "The maildir POP3 serves, relative to $HOME."],
        ["qmqpport", None, 628, "With --nullclient: the QMQP servers' port.", int],
        ["receivers", None, 0, "Run SMTP/QMTP/QMQP sessions in this many receiver processes "
         "(0: in the daemon's own process); the daemon keeps accepting, rules and limits.",
         int],
    ]

    optFlags = [
        ["pop3-tls-required", None, "POP3: refuse USER/PASS/APOP/AUTH until STLS."],
        ["nullclient", None, "Null client: SMTP/QMTP/QMQP listeners hand each message to the "
         "first answering server of control/qmqpservers (as qmail-qmqpc), queueing nothing."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listeners"] = []
        self["rules"] = {}
        self["maxconn"] = {}
        self["maxperip"] = {}

    def listen(self, kind, description):
        """
        Take a listener, refusing (as a usage error) an endpoint string Twisted cannot parse.
        Parsed against a stand-in reactor: option parsing must not install the real one.
        """
        from twisted.internet import endpoints
        from twisted.internet.testing import MemoryReactor

        try:
            endpoints.serverFromString(MemoryReactor(), description)
        except Exception as e:
            raise usage.UsageError(f"--{kind} {description!r}: {e}")
        self["listeners"].append((kind, description))

    def opt_smtp(self, description):
        """Listen for SMTP on this endpoint (repeatable), e.g. tcp:25:interface=0.0.0.0"""
        self.listen("smtp", description)

    def opt_submission(self, description):
        """Listen for mail submission (AUTH required before MAIL) on this endpoint, e.g. tcp:587"""
        self.listen("submission", description)

    def opt_smtps(self, description):
        """Listen for SMTP over implicit TLS (AUTH required) on this endpoint, e.g. tcp:465"""
        self.listen("smtps", description)

    def opt_qmtp(self, description):
        """Listen for QMTP on this endpoint (repeatable), e.g. tcp:209"""
        self.listen("qmtp", description)

    def opt_qmqp(self, description):
        """Listen for QMQP on this endpoint (repeatable); restrict it with --rules qmqp=..."""
        self.listen("qmqp", description)

    def opt_pop3(self, description):
        """Listen for POP3 (STLS if control/servercert.pem exists) on this endpoint"""
        self.listen("pop3", description)

    def opt_pop3s(self, description):
        """Listen for POP3 over implicit TLS (port 995 style) on this endpoint"""
        self.listen("pop3s", description)

    def opt_rules(self, value):
        """SERVICE=PATH: tcprules text file or cdb for that listener (repeatable)"""
        name, path = _serviceValue("rules", value)
        self["rules"][name] = path

    def opt_maxconn(self, value):
        """SERVICE=N: at most N simultaneous connections (tcpserver -c; default 40)"""
        name, n = _serviceValue("maxconn", value, _count)
        self["maxconn"][name] = n

    def opt_maxperip(self, value):
        """SERVICE=N: at most N simultaneous connections from one IP (0 = no limit)"""
        name, n = _serviceValue("maxperip", value, _count)
        self["maxperip"][name] = n

    def postOptions(self):
        if self["me"] is not None and not isHostName(self["me"]):
            raise usage.UsageError(f"--me {self['me']!r} is not a host name ({HOST_NAME_RULE})")
        if self["receivers"] < 0:
            raise usage.UsageError("--receivers takes a count (0 or more)")
        if any(k in ("submission", "smtps") for k, _ in self["listeners"]) and \
                not self["checkpassword"]:
            raise usage.UsageError("--submission/--smtps need --checkpassword PROGRAM")
        if any(k in ("pop3", "pop3s") for k, _ in self["listeners"]) and not self["checkpassword"]:
            raise usage.UsageError("--pop3/--pop3s need --checkpassword PROGRAM")
        if not self["listeners"]:
            self.listen("smtp", DEFAULT_SMTP)
        self._chooseLogger()

    def _chooseLogger(self):
        """
        Where twistd would write its own timestamped lines to standard output (C{-n}, no
        C{--logger}, C{--syslog} or C{--logfile} other than C{-}), have
        L{qmailtx.log.stamped} write them: the same bytes at about a third of the cost,
        which the queue manager's seven lines a message make a large share of the daemon's
        CPU.  Every explicit choice of the administrator stays twistd's.
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        if parent.get("logger") or parent.get("syslog") or not parent.get("nodaemon"):
            return
        if parent.get("logfile") not in (None, "", "-"):
            return
        parent["logger"] = "qmailtx.log.stamped"


def makeService(options):
    return makeQmailService(options)
