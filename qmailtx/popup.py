"""
POP3 AUTHORIZATION state: qmail-popup's verbs (spec/pop3.md §1) and the extensions of §5
(CAPA, STLS, AUTH PLAIN/LOGIN/CRAM-MD5, the TLS-required option).

L{Popup} is a mixin for the protocol in L{qmailtx.pop3}: it turns lines into at most one
checkpassword call per connection and never touches a mailbox.  Pure parsing helpers
(L{splitCommand}, L{parsePlain}, L{decodeResponse}) are separate so they can be tested
without a transport.  Writes nothing to disk; must not import maildir code.
"""

import base64
import binascii

OK = b"+OK "

ERR_SYNTAX = b"-ERR syntax error"
ERR_USER_FIRST = b"-ERR USER first"
ERR_AUTHORIZATION_FIRST = b"-ERR authorization first"
ERR_TLS_REQUIRED = b"-ERR TLS required"
ERR_TLS_ACTIVE = b"-ERR Command not permitted when TLS active"
ERR_UNIMPLEMENTED = b"-ERR unimplemented"
ERR_AUTH_CANCELED = b"-ERR auth exchange canceled"
ERR_AUTH_MALFORMED = b"-ERR malformed auth input"
ERR_AUTH_UNKNOWN = b"-ERR auth type unimplemented"

PROMPT_USERNAME = b"VXNlcm5hbWU6"
PROMPT_PASSWORD = b"UGFzc3dvcmQ6"

IMPLEMENTATION = b"qmailtx"


def splitCommand(line):
    """(lowercased verb, argument): verb up to the first space, argument without leading spaces."""
    verb, _, arg = line.partition(b" ")
    return verb.lower(), arg.lstrip(b" ")


class MalformedAuth(ValueError):
    """A SASL response that is not valid base64 or not the mechanism's shape."""


def decodeResponse(text):
    """Decode one base64 SASL response; C{=} is the empty initial response."""
    if text == b"=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedAuth()


def parsePlain(data):
    """RFC 4616 C{authzid\\0user\\0password} ⇒ (user, password); authzid is ignored."""
    fields = data.split(b"\0")
    if len(fields) != 3 or not fields[1] or not fields[2]:
        raise MalformedAuth()
    return fields[1], fields[2]


def parseCram(data):
    """CRAM-MD5 response C{user SP hexdigest} ⇒ (user, digest); a NUL in it is malformed."""
    user, sep, digest = data.rpartition(b" ")
    if not sep or not user or not digest or b"\0" in data:
        raise MalformedAuth()
    return user, digest


class Popup:
    """
    AUTHORIZATION-state verbs.  The host class provides C{config}, C{tlsActive},
    C{timestamp}, L{reply}, L{replyLines}, C{close()}, C{startTLS()}, C{tlsProblem()} (why
    the configured certificate cannot be used now, or C{None}) and
    C{authenticate(login, password, challenge)}.
    """

    user = None
    sasl = None

    def plaintextAllowed(self):
        return self.tlsActive or not self.config.tlsRequired

    def mechanisms(self):
        mechs = [b"PLAIN", b"LOGIN"]
        if self.config.cramMD5:
            mechs.append(b"CRAM-MD5")
        return mechs

    def capabilities(self, authorization):
        caps = [b"TOP", b"UIDL", b"PIPELINING"]
        if authorization:
            if self.plaintextAllowed():
                caps.append(b"USER")
                caps.append(b"SASL " + b" ".join(self.mechanisms()))
            if (self.config.tlsContext is not None and not self.tlsActive
                    and self.tlsProblem() is None):
                caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION " + IMPLEMENTATION)
        return caps

    def do_CAPA(self, arg):
        self.replyLines(b"+OK Capability list follows",
                        self.capabilities(self.state == "authorization"))

    def authorizationLine(self, line):
        if self.sasl is not None:
            return self.saslLine(line)
        verb, arg = splitCommand(line)
        handler = self.AUTHORIZATION_VERBS.get(verb)
        if handler is None:
            return self.reply(ERR_AUTHORIZATION_FIRST)
        return handler(self, arg)

    def _plaintextRefused(self):
        if self.plaintextAllowed():
            return False
        self.reply(ERR_TLS_REQUIRED)
        return True

    def a_USER(self, arg):
        if self._plaintextRefused():
            return
        if not arg:
            return self.reply(ERR_SYNTAX)
        self.user = arg
        self.reply(OK)

    def a_PASS(self, arg):
        if self._plaintextRefused():
            return
        if self.user is None:
            return self.reply(ERR_USER_FIRST)
        if not arg:
            return self.reply(ERR_SYNTAX)
        self.authenticate(self.user, arg, self.timestamp)

    def a_APOP(self, arg):
        if self._plaintextRefused():
            return
        name, space, digest = arg.partition(b" ")
        if not space:
            return self.reply(ERR_SYNTAX)
        self.authenticate(name, digest, self.timestamp)

    def a_QUIT(self, arg):
        self.reply(OK)
        self.close()

    def a_NOOP(self, arg):
        self.reply(OK)

    def a_STLS(self, arg):
        if arg:
            return self.reply(ERR_SYNTAX)  # RFC 2595 §4: STLS takes no argument
        if self.tlsActive:
            return self.reply(ERR_TLS_ACTIVE)
        if self.config.tlsContext is None:
            return self.reply(ERR_UNIMPLEMENTED)
        problem = self.tlsProblem()
        if problem is not None:
            return self.reply(b"-ERR TLS not available: " + problem)
        self.reply(b"+OK Begin TLS negotiation")
        self.user = None
        self.startTLS()

    def a_AUTH(self, arg):
        if self._plaintextRefused():
            return  # even the bare listing: CAPA hides SASL until STLS
        if not arg:
            return self.replyLines(b"+OK", self.mechanisms())
        mech, _, initial = arg.partition(b" ")
        mech = mech.upper()
        initial = initial.strip(b" ") or None
        if mech not in self.mechanisms():
            return self.reply(ERR_AUTH_UNKNOWN)
        self.sasl = [mech]
        if mech == b"CRAM-MD5":
            if initial is not None:
                return self._saslFail(ERR_AUTH_MALFORMED)
            return self._challenge(base64.b64encode(self.timestamp))
        if initial is not None:
            return self.saslLine(initial)
        if mech == b"PLAIN":
            return self._challenge(b"")
        return self._challenge(PROMPT_USERNAME)

    def _challenge(self, text):
        self.reply(b"+ " + text)

    def _saslFail(self, text):
        self.sasl = None
        self.reply(text)

    def saslLine(self, line):
        if line == b"*":
            return self._saslFail(ERR_AUTH_CANCELED)
        try:
            data = decodeResponse(line)
            mech = self.sasl[0]
            if mech == b"PLAIN":
                login, password = parsePlain(data)
                challenge = self.timestamp
            elif mech == b"CRAM-MD5":
                login, password = parseCram(data)
                challenge = self.timestamp
            elif len(self.sasl) == 1:
                self.sasl.append(data)
                return self._challenge(PROMPT_PASSWORD)
            else:
                login, password, challenge = self.sasl[1], data, self.timestamp
                if not login or not password or b"\0" in login or b"\0" in password:
                    # A NUL would end the field on fd 3 and start the next one.
                    raise MalformedAuth()
        except MalformedAuth:
            return self._saslFail(ERR_AUTH_MALFORMED)
        self.sasl = None
        self.authenticate(login, password, challenge)

    AUTHORIZATION_VERBS = {
        b"user": a_USER,
        b"pass": a_PASS,
        b"apop": a_APOP,
        b"quit": a_QUIT,
        b"noop": a_NOOP,
        b"capa": do_CAPA,
        b"stls": a_STLS,
        b"auth": a_AUTH,
    }
