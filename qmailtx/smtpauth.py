"""
SMTP AUTH as pure pieces (spec/smtp.md §7): what C{SMTPAUTH} enables, the reply texts, one
SASL exchange (PLAIN, LOGIN, CRAM-MD5) as a state machine from client lines to the next step,
and the failure throttle that slows password guessing per connection and per IP.

No I/O and no reactor: the throttle takes a clock.  The protocol side lives in
L{qmailtx.smtpsecure}.  Must not import Twisted protocols, checkpassword or the queue.
"""

import base64
import binascii
from collections import OrderedDict
from dataclasses import dataclass

LOGIN, PLAIN, CRAM_MD5 = b"LOGIN", b"PLAIN", b"CRAM-MD5"

AUTH_OK = b"235 ok, go ahead (#2.0.0)"
NOT_AVAILABLE = b"503 auth not available (#5.3.3)"
NEEDS_TLS = b"538 auth not available without TLS (#5.3.3)"
ALREADY = b"503 you're already authenticated (#5.5.0)"
IN_TRANSACTION = b"503 no auth during mail transaction (#5.5.0)"
UNKNOWN_MECHANISM = b"504 auth type unimplemented (#5.5.1)"
CANCELED = b"501 auth exchange canceled (#5.0.0)"
MALFORMED = b"501 malformed auth input (#5.5.4)"
CHILD_PROBLEM = b"454 oops, problem with child and I can't auth (#4.3.0)"
CHILD_WONT_START = b"454 oops, child won't start and I can't auth (#4.3.0)"
FAILED = b"535 authentication failed (#5.7.1)"
REQUIRED = b"530 Authorization required (#5.7.1)"

PROMPT_USERNAME = b"334 VXNlcm5hbWU6"
PROMPT_PASSWORD = b"334 UGFzc3dvcmQ6"

FAILURE_DELAY = 2.0
"""Seconds before the first C{535} (fehcom waits 5 s, blocking; ours holds only this client)."""

MAX_FAILURE_DELAY = 30.0
"""Ceiling of the doubling delay."""

IP_MEMORY = 900.0
"""Seconds an IP's failures are remembered after its last failure."""

TRACKED_IPS = 10000
"""IPs whose failures are remembered; the least recently failing is forgotten first."""


@dataclass(frozen=True)
class AuthPolicy:
    """
    AUTH for one connection: the mechanisms in EHLO order, and whether MAIL needs AUTH first.
    """

    mechanisms: tuple
    required: bool

    def ehloLine(self):
        return b"250-AUTH " + b" ".join(self.mechanisms)


def authPolicy(value):
    """
    The L{AuthPolicy} of an C{SMTPAUTH} value (str, as in the environment), or C{None} when
    AUTH is off (unset or C{-}).
    """
    if value is None or value == "-":
        return None
    required = value.startswith("!")
    rest = value[1:] if required else value
    if rest == "+cram":
        mechanisms = (LOGIN, PLAIN, CRAM_MD5)
    elif rest == "cram":
        mechanisms = (CRAM_MD5,)
    else:
        mechanisms = (LOGIN, PLAIN)
    return AuthPolicy(mechanisms, required)


def plaintextAuthAllowed(env):
    """
    Whether AUTH may run before TLS: qmailtx forces TLS for AUTH (Telka's C{FORCETLS}) unless
    the rules say C{FORCETLS="0"}.
    """
    return env.get("FORCETLS") == "0"


def cramChallenge(serial, now, local):
    """The CRAM-MD5 challenge C{<PID.UNIXTIME@LOCAL>}, a unique serial standing in for PID."""
    return b"<%d.%d@%s>" % (serial, int(now), local)


def decode(line):
    """One base64 client line; an empty line or bad base64 is L{MALFORMED}."""
    if not line:
        raise ValueError(line)
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(line)


@dataclass(frozen=True)
class Challenge:
    """Send C{line} (a C{334}) and feed the client's answer to the same exchange."""

    line: bytes


@dataclass(frozen=True)
class Done:
    """The exchange ended without credentials: send C{line}."""

    line: bytes


@dataclass(frozen=True)
class Credentials:
    """Check these with checkpassword (C{challenge} empty except for CRAM-MD5)."""

    user: bytes
    password: bytes
    challenge: bytes = b""


class Exchange:
    """
    One C{AUTH} dialogue after its command line was accepted: L{begin} with the optional
    initial response, then L{respond} to each client line until a L{Done} or
    L{Credentials}.
    """

    def __init__(self, mechanism, challenge):
        self.mechanism = mechanism
        self.challenge = challenge
        self.user = None

    def begin(self, initial):
        if self.mechanism == CRAM_MD5:
            if initial is not None:
                return Done(MALFORMED)
            return Challenge(b"334 " + base64.b64encode(self.challenge))
        if initial is not None:
            return self.respond(initial)
        return Challenge(b"334 " if self.mechanism == PLAIN else PROMPT_USERNAME)

    def respond(self, line):
        if line == b"*":
            return Done(CANCELED)
        try:
            data = decode(line)
        except ValueError:
            return Done(MALFORMED)
        if self.mechanism != PLAIN and b"\0" in data:
            # checkpassword's fields end at a NUL: the rest would be read as the next
            # field, e.g. a replayed CRAM-MD5 challenge (PLAIN splits at them instead).
            return Done(MALFORMED)
        if self.mechanism == PLAIN:
            fields = data.split(b"\0")
            if len(fields) != 3 or not fields[1] or not fields[2]:
                return Done(MALFORMED)
            return Credentials(fields[1], fields[2])
        if self.mechanism == CRAM_MD5:
            user, space, digest = data.rpartition(b" ")
            if not space or not user or not digest:
                return Done(MALFORMED)
            return Credentials(user, digest, self.challenge)
        if self.user is None:
            if not data:
                return Done(MALFORMED)
            self.user = data
            return Challenge(PROMPT_PASSWORD)
        if not data:
            return Done(MALFORMED)
        return Credentials(self.user, data)


def startExchange(arg, policy, challenge):
    """
    (first step, L{Exchange} or C{None}) for the argument of C{AUTH} under C{policy};
    C{challenge} is what a CRAM-MD5 exchange would send.
    """
    mechanism, _, initial = arg.partition(b" ")
    mechanism = mechanism.upper()
    initial = initial.strip(b" ") or None
    if mechanism not in policy.mechanisms:
        return Done(UNKNOWN_MECHANISM), None
    exchange = Exchange(mechanism, challenge)
    return exchange.begin(initial), exchange


class AuthThrottle:
    """
    How long to hold a C{535}: doubling from L{FAILURE_DELAY} with the failures of the
    connection or of its IP (whichever is more), so neither many tries on one connection nor
    many connections from one address guess fast.  Holding the answer alone would not do:
    a C{235} comes at once, so a client could hang up after a moment and try again; once
    an IP has failed, its checks themselves are paced (L{admit}).  Bounded to
    L{TRACKED_IPS} addresses.
    """

    def __init__(self, clock, base=FAILURE_DELAY, ceiling=MAX_FAILURE_DELAY,
                 memory=IP_MEMORY, tracked=TRACKED_IPS):
        self.clock = clock
        self.base = base
        self.ceiling = ceiling
        self.memory = memory
        self.tracked = tracked
        self._failures = OrderedDict()
        """ip -> (failures, time of the last, earliest start of its next check)"""

    def recentFailures(self, ip):
        entry = self._failures.get(ip)
        if entry is None:
            return 0
        count, last, _ = entry
        if self.clock.seconds() - last > self.memory:
            del self._failures[ip]
            return 0
        return count

    def _delay(self, failures):
        return min(self.ceiling, self.base * 2 ** min(failures - 1, 32))

    def failed(self, ip, connectionFailures):
        """
        Record one more failure of C{ip}; C{connectionFailures} counts this one too.
        @return: seconds to wait before replying.
        """
        count = self.recentFailures(ip) + 1
        now = self.clock.seconds()
        nextCheck = self._failures[ip][2] if count > 1 else now
        self._failures[ip] = (count, now, max(nextCheck, now + self._delay(count)))
        self._failures.move_to_end(ip)
        while len(self._failures) > self.tracked:
            self._failures.popitem(last=False)
        if not self.base:
            return 0.0
        return self._delay(max(count, connectionFailures))

    def admit(self, ip):
        """
        Seconds to wait before checking credentials from C{ip}: none while it has no
        recent failure; after one, its checks start at least the current delay apart
        (counted from its last failure or its last check, so a client that waited for its
        C{535} is not held again), however many connections ask.  Asking reserves nothing:
        a waiting session asks again when its wait is over, and a client that hangs up
        while it waits holds up no one.
        """
        count = self.recentFailures(ip)
        if not count or not self.base:
            return 0.0
        return max(0.0, self._failures[ip][2] - self.clock.seconds())

    def started(self, ip):
        """A check of C{ip}'s credentials starts now (after L{admit} said 0)."""
        count = self.recentFailures(ip)
        if count and self.base:
            _, last, _ = self._failures[ip]
            self._failures[ip] = (count, last, self.clock.seconds() + self._delay(count))
