"""
The service tree of C{twistd qmail}: the queue, qmail-send with its local spawner and remote
deliverer, and one listener per endpoint, each behind the tcpserver rules layer.

Wires nouns together and decides nothing: protocols come from their modules, policy from
control files and rules.  A listener kind is a builder in L{LISTENERS} taking
C{(site, config)} and returning the protocol factory to put behind the rules layer.
"""

import os
import shlex
import shutil
import signal
import sys

import twisted
from twisted.application import service
from twisted.internet import endpoints

import qmailtx
from qmailtx import log
from qmailtx.commits import DAEMON_DRAIN_LIMIT, Commits
from qmailtx.control import ControlDir
from qmailtx.flushclient import FlusherService
from qmailtx.ipme import ipmeOrNone
from qmailtx.qqprogram import ProgramQueue
from qmailtx.queue import Queue
from qmailtx.results import StartRefused
from qmailtx.rootdir import blockedAncestor, createRoot
from qmailtx.rules import DefaultRulesSource, Rules, RulesError, RulesSource
from qmailtx.smtpfactory import SMTPFactory
from qmailtx.tcpserver import RulesFactory

DEFAULT_MAXCONN = 40
"""tcpserver's default concurrency limit (-c 40)."""


class Site:
    """
    What every listener of one qmail root shares: the root, its controls, its queue.
    """

    def __init__(self, root, reactor):
        self.root = os.path.abspath(root)
        self.reactor = reactor
        self.controls = ControlDir(os.path.join(self.root, "control"))
        self.queue = Queue(self.root, reactor)
        self.commits = Commits(reactor)
        self.listenerQueue = self.queue
        self.ipme = ipmeOrNone()
        if self.ipme is None:
            log.warning("unable to figure out my IP addresses: SMTP sessions get 421 until "
                        "the interfaces can be read")

    @property
    def listenerQueue(self):
        """The queue the listeners write to (the daemon's, or a null client's QMQP
        servers), its commits watched by L{commits}."""
        return self._listenerQueue

    @listenerQueue.setter
    def listenerQueue(self, queue):
        self._listenerQueue = self.commits.watch(queue)

    def programQueue(self, program, env):
        """
        The C{QMAILQUEUE} program as a queue, run with the connection's environment (and
        the daemon's PATH, which qmail-smtpd would have inherited from its supervisor).
        """
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        return self.commits.watch(ProgramQueue(program.encode("utf-8", "surrogateescape"),
                                               self.root, env, self.reactor))

    def defaultRules(self, name):
        """
        C{ROOT/rules/NAME.cdb}, else C{ROOT/rules/NAME}, else none (allow everyone),
        looked for again as the listener runs.  QMQP alone refuses everyone without
        rules: it checks no rcpthosts, so allowing everyone would make an open relay.
        """
        unruled = Rules.fromText(b":deny\n") if name == "qmqp" else None
        source = DefaultRulesSource([os.path.join(self.root, "rules", candidate)
                                     for candidate in (name + ".cdb", name)],
                                    unruled=unruled)
        if unruled is not None and source.path is None:
            log.warning(f"{name}: no rules file: every client is refused until "
                        f"{os.path.join(self.root, 'rules', name)} lets some in")
        return source


def buildSMTP(site, config, defaultEnv=None):
    """
    An SMTP listener.  AUTH needs C{--checkpassword}; every SMTP listener of the site shares
    one AUTH failure throttle (per IP) and one set of TLS contexts.
    """
    import shlex

    from qmailtx.smtpauth import AuthThrottle
    from qmailtx.tls import ContextCache

    factory = SMTPFactory(site.controls, site.listenerQueue, site.reactor, site.ipme,
                          site.programQueue)
    if config.get("checkpassword"):
        factory.checkpassword = [os.fsencode(w) for w in shlex.split(config["checkpassword"])]
    if getattr(site, "smtpAuthThrottle", None) is None:
        site.smtpAuthThrottle = AuthThrottle(site.reactor)
        site.smtpTLS = ContextCache()
    site.commits.farewells.append(factory.shuttingDown)
    factory.authThrottle = site.smtpAuthThrottle
    factory.tlsContexts = site.smtpTLS
    if defaultEnv:
        factory.defaultEnv = defaultEnv
    return factory


def buildSubmission(site, config):
    """Port 587 (RFC 6409): AUTH before MAIL unless the rules set SMTPAUTH otherwise."""
    return buildSMTP(site, config, {"SMTPAUTH": "!"})


def buildSMTPS(site, config):
    """Port 465 (RFC 8314): implicit TLS, then the same as submission."""
    return buildSMTP(site, config, {"SMTPS": "1", "SMTPAUTH": "!"})


def buildQMTP(site, config):
    from qmailtx.qmtp import QMTPFactory

    return QMTPFactory(site.listenerQueue, site.controls, site.reactor, site.programQueue)


def buildQMQP(site, config):
    from qmailtx.qmqp import QMQPFactory

    return QMQPFactory(site.listenerQueue, site.controls, site.reactor, site.programQueue)


def buildPOP3(site, config, implicitTLS=False):
    from qmailtx.pop3 import buildFactory

    return buildFactory(site, config, implicitTLS)


def buildPOP3S(site, config):
    return buildPOP3(site, config, implicitTLS=True)


LISTENERS = {"smtp": buildSMTP, "submission": buildSubmission, "smtps": buildSMTPS,
             "qmtp": buildQMTP, "qmqp": buildQMQP, "pop3": buildPOP3,
             "pop3s": buildPOP3S}


class QmailService(service.MultiService):
    """
    The tree's root.  twistd starts services before its reactor runs, so stopping the
    reactor from inside a start does nothing: a service that cannot start raises
    L{StartRefused} from C{privilegedStartService} instead, before any socket of a live
    daemon on the same root is touched and before a listener takes a connection.

    The exception goes through twistd on purpose: it removes its pid file and, when
    daemonizing, hands the reason to the waiting parent (which prints it and exits 1; a
    C{SystemExit} would leave that parent waiting for ever).  What reaches the top is then
    one line on stderr and exit 111, as qmail's programs end on trouble, not a traceback.

    Stopping also waits for the commits the listeners have in flight (L{Site.commits}), so
    that a client whose message is queued hears so before the reactor drops it.
    """

    def __init__(self, site):
        service.MultiService.__init__(self)
        self.site = site

    def stopService(self):
        """
        New messages are refused from the start; the wait for those in flight comes after
        the services' own stops (qmail-send may wait long for its deliveries), so that a
        POP3 QUIT read meanwhile is waited for too.
        """
        commits = self.site.commits
        commits.refuse()
        stopped = service.MultiService.stopService(self)
        return stopped.addCallback(lambda _: commits.close(limit=DAEMON_DRAIN_LIMIT))

    def startService(self):
        service.MultiService.startService(self)
        reactor = getattr(self.site, "reactor", None)
        if reactor is not None:
            reactor.callWhenRunning(_hearRepeatedStops, reactor, lambda: not self.running)

    def privilegedStartService(self):
        try:
            service.MultiService.privilegedStartService(self)
        except StartRefused:
            sys.excepthook = _refusedHook(sys.excepthook)
            raise


def _hearRepeatedStops(reactor, stopping):
    """
    Wrap the reactor's SIGTERM and SIGINT handlers (installed once it runs): the first
    signal stops the daemon as before; one that comes once a stop is under way (signalled,
    or C{stopping()} says so) is only logged, where the reactor's own handler would call its
    C{stop} again and log C{ReactorNotRunning} with a traceback.  Handlers someone else
    installed are left alone.
    """
    signalled = []

    def heard(number, frame):
        if signalled or stopping():
            name = signal.Signals(number).name
            reactor.callFromThread(
                log.event, f"{name}: already stopping, answering the messages in flight first")
            return
        signalled.append(number)
        original[number](number, frame)

    original = {}
    for number, handler in ((signal.SIGTERM, getattr(reactor, "sigTerm", None)),
                            (signal.SIGINT, getattr(reactor, "sigInt", None))):
        if handler is not None and signal.getsignal(number) == handler:
            original[number] = handler
            signal.signal(number, heard)


def _refusedHook(previous):
    def hook(kind, value, tb):
        if not isinstance(value, StartRefused):
            return previous(kind, value, tb)
        try:
            sys.stdout.flush()
            sys.stderr.write(f"qmailtx: cannot start: {value}\n")
            sys.stderr.flush()
        finally:
            os._exit(111)
    return hook


def _unservable(site, config):
    """
    What the listeners asked for cannot do, found before anything starts: the reason a
    start is refused (C{--pop3s} without a certificate), else C{None}; listeners that start
    but would fail every client are warned of here, rather than at the first client.
    """
    from qmailtx.checkpassword import DEFAULT_PATH

    kinds = {kind for kind, _ in config["listeners"]}
    if not site.controls.exists("servercert.pem"):
        if "pop3s" in kinds:
            return "--pop3s needs control/servercert.pem"
        if "smtps" in kinds:
            log.warning("smtps: no control/servercert.pem: every connection is dropped "
                        "until it exists")
        if "pop3" in kinds and config.get("pop3-tls-required"):
            log.warning("pop3: --pop3-tls-required without control/servercert.pem: nobody "
                        "can log in until it exists")
    try:
        words = shlex.split(config.get("checkpassword") or "")
    except ValueError as e:
        return f"--checkpassword: {e}"
    if words and kinds & {"pop3", "pop3s", "smtp", "submission", "smtps"}:
        path = os.fsdecode(DEFAULT_PATH)
        if "/" in words[0]:
            if not os.access(words[0], os.X_OK):
                log.warning(f"checkpassword: {words[0]} is not an executable file: every "
                            "SMTP AUTH and POP3 login will fail")
        elif shutil.which(words[0], path=path) is None:
            log.warning(f"checkpassword: {words[0]} not found in {path}: every SMTP AUTH "
                        "and POP3 login will fail")
    return None


class _RefusedStart(service.Service):
    """A start found impossible while the tree was built (rules that cannot be used): said
    as qmail-send's refusals are, from privilegedStartService, before anything listens."""

    def __init__(self, why):
        self.why = why

    def privilegedStartService(self):
        log.alert("cannot start: " + self.why)
        raise StartRefused(self.why)


class ListenerService(service.Service):
    """One endpoint: listens in privilegedStartService so low ports bind before shedding root."""

    def __init__(self, kind, description, endpoint, factory):
        self.kind = kind
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port = None
        self._listening = None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        refused = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._cbListening, self._ebListening,
                                     errbackArgs=(refused,))
        if refused:
            raise StartRefused(refused[0])

    def _cbListening(self, port):
        self.port = port
        self.factory.setPort(port)
        address = port.getHost()
        log.event(f"{self.kind}: listening on {address.host}:{address.port}")
        return port

    def _ebListening(self, failure, refused):
        why = f"unable to listen for {self.kind} on {self.description}: {failure.getErrorMessage()}"
        log.alert("cannot start: " + why)
        refused.append(why)
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()
        return None

    def startService(self):
        service.Service.startService(self)
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self):
        service.Service.stopService(self)
        self._listening = None
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def remoteDeliverer(site):
    """C{qmailtx.remote}'s deliverer, or a stand-in deferring every remote recipient."""
    try:
        from qmailtx.remote import RemoteDeliverer
    except ImportError:
        from qmailtx.send import UnavailableRemote

        log.warning("no qmailtx.remote: remote recipients are deferred")
        return UnavailableRemote()
    return RemoteDeliverer(site.controls, site.reactor)


def addDelivery(site, top):
    """The local spawner, qmail-send and the ctl socket (stopped in reverse: send first)."""
    from qmailtx.lspawn import LocalSpawner
    from qmailtx.send import Sender
    from qmailtx.sendctl import ControlService

    spawner = LocalSpawner(site.root, site.reactor)
    spawner.setServiceParent(top)
    sender = Sender(site.queue, site.controls, site.reactor, spawner, remoteDeliverer(site),
                    handleSignals=True)
    sender.setServiceParent(top)
    site.queue.spares = sender.spares
    ControlService(site.root, sender, site.reactor).setServiceParent(top)
    from qmailtx.queuesocket import QueueSocketService
    QueueSocketService(site.root, site.commits.watch(site.queue), site.reactor).setServiceParent(top)
    top.sender = sender


def _warnUnreachableAlias(root):
    """Started as root, say so at once if the alias user cannot reach ROOT/alias."""
    alias = os.path.join(root, "alias")
    if os.geteuid() != 0 or not os.path.isdir(alias):
        return
    st = os.stat(alias)
    blocked = blockedAncestor(alias, st.st_uid, st.st_gid)
    if blocked is not None:
        log.warning(f"alias deliveries will defer: uid {st.st_uid} cannot pass through {blocked}; "
                    "put the root where its mail users can reach it")


def _warnUnreachableRuntime(paths=None, uid=65534, gid=65534):
    """
    Started as root, say so at once if a mailbox owner (checked as C{nobody}) could not run
    this Python or import qmailtx: deliveries start as root, but a forward or a C{qmailtx}
    command in a C{.qmail} program runs them as the owner, and would defer with
    C{unable to exec qq}.
    """
    if os.geteuid() != 0:
        return
    for path in (_runtimePaths() if paths is None else paths):
        blocked = blockedAncestor(path, uid, gid)
        if blocked is not None:
            log.warning(f"forwards will defer: mailbox owners cannot reach {path} ({blocked} is "
                        "closed to them); install qmailtx and its Python where every user can "
                        "run them")
            return


def _runtimePaths():
    """What a forward execs and imports: the interpreter as named and as resolved, and the
    files of qmailtx and Twisted (each checked from its own directory up)."""
    return [sys.executable, os.path.realpath(sys.executable),
            os.path.realpath(qmailtx.__file__), os.path.realpath(twisted.__file__)]


def makeQmailService(config, reactor=None):
    """
    Build the service tree from parsed L{qmailtx.tap.Options}.  Creates the root on first
    run (the embedded default).
    """
    if reactor is None:
        from twisted.internet import reactor
    root = config["root"]
    if not os.path.exists(os.path.join(root, "control")):
        createRoot(root, config.get("me"))
        log.event(f"created qmail root {os.path.abspath(root)}")
    site = Site(root, reactor)
    _warnUnreachableAlias(site.root)
    _warnUnreachableRuntime()
    if config.get("nullclient"):
        from qmailtx.nullclient import QmqpQueue

        site.listenerQueue = QmqpQueue(site.controls, reactor, port=config["qmqpport"])
        log.event("null client: listeners hand messages to control/qmqpservers")
    top = QmailService(site)
    rules = {}
    for kind, _ in config["listeners"]:
        rulesPath = config["rules"].get(kind)
        try:
            rules[kind] = RulesSource(rulesPath) if rulesPath else site.defaultRules(kind)
        except RulesError as e:
            _RefusedStart(f"unable to use the {kind} rules {e.path}: {e}").setServiceParent(top)
            return top
        if rulesPath and not os.path.lexists(rulesPath):
            # tcpserver -x with a missing file drops every client; said now, not per client.
            log.warning(f"{kind}: {rulesPath} does not exist: every connection is dropped "
                        "until it does")
    refusal = _unservable(site, config)
    if refusal is not None:
        _RefusedStart(refusal).setServiceParent(top)
        return top
    FlusherService(site.queue, reactor).setServiceParent(top)
    addDelivery(site, top)
    pool = None
    if config.get("receivers"):
        from qmailtx.receiver import HandOffFactory, ReceiverPool, handsOff

        if any(handsOff(kind, description) for kind, description in config["listeners"]):
            pool = ReceiverPool(site, config, config["receivers"], reactor)
            pool.setServiceParent(top)
    for kind, description in config["listeners"]:
        factory = LISTENERS[kind](site, config)
        if pool is not None and handsOff(kind, description):
            factory = HandOffFactory(pool, kind, factory)
        wrapped = RulesFactory(
            factory,
            kind,
            rules=rules[kind],
            maxConnections=config["maxconn"].get(kind, DEFAULT_MAXCONN),
            maxPerIP=config["maxperip"].get(kind, 0),
            reactor=reactor,
        )
        endpoint = endpoints.serverFromString(reactor, description)
        ListenerService(kind, description, endpoint, wrapped).setServiceParent(top)
    return top
