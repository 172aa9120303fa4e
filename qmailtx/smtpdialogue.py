"""
The SMTP dialogue: qmail-remote's commands and report texts (spec/remote.md §4-5, §7) on
an open L{qmailtx.smtpclient.SMTPClient}.

L{openSession} (greeting, EHLO with HELO fallback, STARTTLS, AUTH PLAIN/LOGIN only over
TLS) and L{transaction} (MAIL with SIZE, RCPT, DATA and the message, pipelined when
offered) turn replies into qmail-remote's recipient reports (C{r}/C{h}/C{s}) and message
report (C{K}/C{Z}/C{D}): L{Attempt}, L{Failed}, L{quitReport}, L{diedReport},
L{recipientReport}.  Writes nothing on disk; reads the queue file it is handed.  Knows
nothing of DNS, routes or the queue; must not import the queue, send or the servers.
"""

import base64
from dataclasses import dataclass

from twisted.internet import defer

from qmailtx.encoder import PartialFinalLine, PARTIAL_LINE


class Failed(Exception):
    """The dialogue ended with a message report (C{K}/C{Z}/C{D} + text)."""

    def __init__(self, report):
        Exception.__init__(self, report)
        self.report = report


def remoteSaid(reply):
    """C{Remote host said: <reply>} as qmail-remote appends it, or nothing."""
    if reply is None or not reply.text:
        return b""
    return b"Remote host said: " + reply.text.replace(b"\0", b"?")


def quitReport(prefix, ip, append, reply):
    """qmail-remote's C{quit()}: C{prefix IP append.\\n} then the last reply."""
    return prefix + ip + append + b".\n" + remoteSaid(reply)


def diedReport(ip, critical=False):
    """The connection broke or timed out; after the final dot it may have been delivered."""
    return (b"ZConnected to " + ip + b" but connection died. "
            + (b"Possible duplicate! " if critical else b"") + b"(#4.4.2)\n")


@dataclass
class TLSPolicy:
    """
    What to do about STARTTLS on one connection.

    @ivar contextFactory: client TLS options (verifying ones when C{required}).
    @ivar required: no TLS, or a certificate that fails verification, is a deferral.
    @ivar name: the name the certificate must carry (for texts).
    """

    contextFactory: object
    required: bool = False
    name: bytes = b""


@dataclass
class Credentials:
    """A route's user and password for AUTH toward a smarthost."""

    user: bytes
    password: bytes


@defer.inlineCallbacks
def openSession(client, helohost, tls=None, credentials=None):
    """
    Greeting, EHLO (HELO when EHLO is refused), STARTTLS and AUTH.  Raises L{Failed}
    with the message report when the session cannot carry mail.
    """
    ip = client.peerAddress()
    try:
        reply = yield client.greeting
        if reply.code != 220:
            raise Failed(quitReport(b"ZConnected to ", ip, b" but greeting failed", reply))
        reply = yield _hello(client, helohost)
        if reply.code != 250:
            raise Failed(quitReport(b"ZConnected to ", ip, b" but my name was rejected", reply))
        if tls is not None and b"STARTTLS" in client.extensions:
            reply = yield client.sendLine(b"STARTTLS")
            if reply.code == 220:
                client.startTLS(tls.contextFactory)
                reply = yield _hello(client, helohost, tls)
                if reply.code != 250:
                    raise Failed(quitReport(
                        b"ZConnected to ", ip, b" but my name was rejected after STARTTLS", reply))
            elif tls.required:
                raise Failed(quitReport(b"ZConnected to ", ip, b" but STARTTLS failed", reply))
        if tls is not None and tls.required and not client.secure:
            raise Failed(b"ZConnected to " + ip + b" but it does not offer STARTTLS, and TLS"
                         b" is required for " + tls.name + b". (#4.7.5)\n")
        if credentials is not None:
            yield _authenticate(client, ip, credentials)
    except Failed:
        client.quit()
        raise
    except TLSFailed as e:
        raise Failed(b"ZConnected to " + ip + b" but TLS negotiation failed: "
                     + e.args[0] + b". (#4.7.5)\n")
    except Exception:
        client.quit()
        raise Failed(diedReport(ip))


class TLSFailed(Exception):
    """The TLS handshake or certificate verification failed (C{args[0]}: why, bytes)."""


@defer.inlineCallbacks
def _hello(client, helohost, tls=None):
    try:
        reply = yield client.sendLine(b"EHLO " + helohost)
    except Exception as e:
        if tls is not None:
            raise TLSFailed(_tlsReason(e))
        raise
    if reply.code == 250:
        client.extensions = parseExtensions(reply.text)
        return reply
    client.extensions = {}
    reply = yield client.sendLine(b"HELO " + helohost)
    return reply


def _tlsReason(failure):
    """Short bytes saying why a TLS connection ended (for the deferral text)."""
    text = str(getattr(failure, "value", failure)) or failure.__class__.__name__
    return text.encode("utf-8", "replace")[:300].replace(b"\n", b" ")


def parseExtensions(text):
    """EHLO reply text to {KEYWORD: parameters}; the first line is the greeting."""
    out = {}
    for line in text.split(b"\n")[1:]:
        words = line[4:].split(None, 1)
        if words:
            out[words[0].upper()] = words[1] if len(words) > 1 else b""
    return out


@defer.inlineCallbacks
def _authenticate(client, ip, credentials):
    if not client.secure:
        raise Failed(b"ZConnected to " + ip + b" but TLS is not in use, so I will not send"
                     b" my password. (#4.7.0)\n")
    mechanisms = client.extensions.get(b"AUTH", b"").upper().split()
    if b"PLAIN" in mechanisms:
        token = base64.b64encode(b"\0" + credentials.user + b"\0" + credentials.password)
        reply = yield client.sendLine(b"AUTH PLAIN " + token)
    elif b"LOGIN" in mechanisms:
        reply = yield client.sendLine(b"AUTH LOGIN")
        for secret in (credentials.user, credentials.password):
            if reply.code != 334:
                break
            reply = yield client.sendLine(base64.b64encode(secret))
    else:
        raise Failed(b"ZConnected to " + ip + b" but it offers neither AUTH PLAIN nor AUTH"
                     b" LOGIN. (#4.7.0)\n")
    if reply.code != 235:
        raise Failed(quitReport(b"ZConnected to ", ip, b" but my authentication was rejected",
                                reply))


@dataclass
class Attempt:
    """
    What one qmail-remote run would print: a recipient report (C{r}/C{h}/C{s} + text,
    or C{None} when the dialogue never reached that RCPT) per recipient, and the message
    report (C{K}/C{Z}/C{D} + text).
    """

    recipients: list
    message: bytes = b""


def recipientReport(ip, reply):
    if reply.code >= 500:
        return b"h" + ip + b" does not like recipient.\n" + remoteSaid(reply)
    if reply.code >= 400:
        return b"s" + ip + b" does not like recipient.\n" + remoteSaid(reply)
    return b"r"


@defer.inlineCallbacks
def transaction(client, sender, recipients, messageFile, size=None):
    """
    MAIL, RCPT per recipient, DATA and the message, on an open session; pipelined when
    the server offers PIPELINING.  C{sender}/C{recipients} are already quoted.  Returns an
    L{Attempt}; never raises (a lost connection is the #4.4.2 report).  From the second
    transaction on a connection, RSET goes first (in the same pipelined group, so reuse
    costs no round trip).
    """
    ip = client.peerAddress()
    attempt = Attempt([None] * len(recipients))
    mail = b"MAIL FROM:<" + sender + b">"
    if size is not None and b"SIZE" in client.extensions:
        mail += b" SIZE=%d" % size
    rcpts = [b"RCPT TO:<" + r + b">" for r in recipients]
    reset, client.needsReset = client.needsReset, True
    if b"PIPELINING" in client.extensions:
        pending = client.sendLines([b"RSET"] * reset + [mail] + rcpts + [b"DATA"])
        if reset:
            pending.pop(0).addErrback(lambda _: None)
    else:
        pending = None
    critical = False
    try:
        if reset and pending is None:
            yield client.sendLine(b"RSET")
        reply = yield pending[0] if pending else client.sendLine(mail)
        if reply.code >= 400:
            attempt.message = quitReport(
                b"DConnected to " if reply.code >= 500 else b"ZConnected to ", ip,
                b" but sender was rejected", reply)
            if pending:
                yield _drain(client, pending[1:])
            return attempt
        accepted = False
        for i in range(len(recipients)):
            reply = yield pending[1 + i] if pending else client.sendLine(rcpts[i])
            attempt.recipients[i] = recipientReport(ip, reply)
            accepted = accepted or reply.code < 400
        if not accepted:
            attempt.message = b"DGiving up on " + ip + b".\n"
            if pending:
                yield _drain(client, pending[-1:])
            return attempt
        reply = yield pending[-1] if pending else client.sendLine(b"DATA")
        if reply.code >= 400:
            attempt.message = quitReport(b"D" if reply.code >= 500 else b"Z", ip,
                                         b" failed on DATA command", reply)
            return attempt
        written, replied = client.sendMessage(messageFile, size)
        yield written
        critical = True
        reply = yield replied
        critical = False
        if reply.code >= 500:
            attempt.message = quitReport(b"D", ip, b" failed after I sent the message", reply)
        elif reply.code >= 400:
            attempt.message = quitReport(b"Z", ip, b" failed after I sent the message", reply)
        else:
            attempt.message = quitReport(b"K", ip, b" accepted message", reply)
        return attempt
    except PartialFinalLine:
        attempt.message = PARTIAL_LINE
        return attempt
    except OSError:
        attempt.message = b"ZUnable to read message. (#4.3.0)\n"
        return attempt
    except Exception:
        client.reusable = False
        attempt.message = diedReport(ip, critical)
        return attempt
    finally:
        for d in pending or ():
            d.addErrback(lambda _: None)


@defer.inlineCallbacks
def _drain(client, pending):
    """
    Wait for the replies to the rest of a pipelined group; a C{354} to a DATA we no longer
    mean to follow leaves the server expecting a message, so the connection can't be reused.
    """
    for d in pending:
        reply = yield d
        if 300 <= reply.code < 400:
            client.reusable = False


