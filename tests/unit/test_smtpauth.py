"""SMTP AUTH's pure pieces (spec/smtp.md §7): SMTPAUTH values, SASL steps, the throttle."""

import base64

import pytest
from twisted.internet import task

from qmailtx import smtpauth
from qmailtx.smtpauth import Challenge, Credentials, Done


def b64(data):
    return base64.b64encode(data)


@pytest.mark.parametrize("value, mechanisms, required", [
    ("", (b"LOGIN", b"PLAIN"), False),
    ("yes", (b"LOGIN", b"PLAIN"), False),
    ("+cram", (b"LOGIN", b"PLAIN", b"CRAM-MD5"), False),
    ("cram", (b"CRAM-MD5",), False),
    ("!", (b"LOGIN", b"PLAIN"), True),
    ("!+cram", (b"LOGIN", b"PLAIN", b"CRAM-MD5"), True),
    ("!cram", (b"CRAM-MD5",), True),
])
def test_policy_table(value, mechanisms, required):
    """Each SMTPAUTH value of the §7 table gives its mechanisms and whether MAIL needs AUTH."""
    policy = smtpauth.authPolicy(value)
    assert policy.mechanisms == mechanisms
    assert policy.required is required
    assert policy.ehloLine() == b"250-AUTH " + b" ".join(mechanisms)


@pytest.mark.parametrize("value", [None, "-"])
def test_policy_off(value):
    """SMTPAUTH unset or '-' means no AUTH at all."""
    assert smtpauth.authPolicy(value) is None


def test_plaintext_auth_only_with_forcetls_0():
    """AUTH before TLS is refused by default; only FORCETLS="0" allows it."""
    assert not smtpauth.plaintextAuthAllowed({})
    assert not smtpauth.plaintextAuthAllowed({"FORCETLS": ""})
    assert not smtpauth.plaintextAuthAllowed({"FORCETLS": "1"})
    assert smtpauth.plaintextAuthAllowed({"FORCETLS": "0"})


def test_cram_challenge_format():
    """The CRAM-MD5 challenge is <PID.UNIXTIME@LOCAL>."""
    assert smtpauth.cramChallenge(4711, 1732217160.7, b"mx.example.com") == \
        b"<4711.1732217160@mx.example.com>"


POLICY = smtpauth.authPolicy("+cram")


def start(arg):
    return smtpauth.startExchange(arg, POLICY, b"<1.2@x>")


def test_plain_initial_response():
    """PLAIN with an initial response: authzid ignored, user and password checked."""
    step, _ = start(b"PLAIN " + b64(b"admin\0joe\0secret"))
    assert step == Credentials(b"joe", b"secret", b"")


def test_plain_mechanism_case_insensitive_and_challenge():
    """'plain' without initial response gets '334 ' (trailing space), then the response."""
    step, ex = start(b"plain")
    assert step == Challenge(b"334 ")
    assert ex.respond(b64(b"\0joe\0secret")) == Credentials(b"joe", b"secret", b"")


def test_login_dialogue():
    """LOGIN asks Username: then Password:, both base64."""
    step, ex = start(b"LOGIN")
    assert step == Challenge(b"334 VXNlcm5hbWU6")
    assert ex.respond(b64(b"joe")) == Challenge(b"334 UGFzc3dvcmQ6")
    assert ex.respond(b64(b"secret")) == Credentials(b"joe", b"secret", b"")


def test_login_initial_response_is_user():
    """LOGIN's initial response is the user name; only the password is asked."""
    step, ex = start(b"LOGIN " + b64(b"joe"))
    assert step == Challenge(b"334 UGFzc3dvcmQ6")
    assert ex.respond(b64(b"pw")) == Credentials(b"joe", b"pw", b"")


def test_cram_md5():
    """CRAM-MD5 sends the challenge in base64; 'user digest' splits at the last space."""
    step, ex = start(b"CRAM-MD5")
    assert step == Challenge(b"334 " + b64(b"<1.2@x>"))
    assert ex.respond(b64(b"joe smith 0123abcd")) == Credentials(b"joe smith", b"0123abcd",
                                                                 b"<1.2@x>")


@pytest.mark.parametrize("arg, reply", [
    (b"GSSAPI", smtpauth.UNKNOWN_MECHANISM),
    (b"", smtpauth.UNKNOWN_MECHANISM),
    (b"PLAIN not*base64", smtpauth.MALFORMED),
    (b"PLAIN " + b64(b"joe\0secret"), smtpauth.MALFORMED),
    (b"PLAIN " + b64(b"\0\0secret"), smtpauth.MALFORMED),
    (b"PLAIN " + b64(b"\0joe\0"), smtpauth.MALFORMED),
    (b"PLAIN =", smtpauth.MALFORMED),
    (b"PLAIN *", smtpauth.CANCELED),
    (b"CRAM-MD5 " + b64(b"x y"), smtpauth.MALFORMED),
])
def test_first_step_errors(arg, reply):
    """Unknown mechanism 504; bad base64, wrong PLAIN shape, empty fields 501 malformed."""
    step, _ = start(arg)
    assert step == Done(reply)


@pytest.mark.parametrize("mech, lines, reply", [
    (b"LOGIN", [b"*"], smtpauth.CANCELED),
    (b"LOGIN", [b""], smtpauth.MALFORMED),
    (b"LOGIN", [b"%%%"], smtpauth.MALFORMED),
    (b"LOGIN", [b64(b"joe"), b""], smtpauth.MALFORMED),
    (b"LOGIN", [b64(b"joe"), b"*"], smtpauth.CANCELED),
    (b"PLAIN", [b""], smtpauth.MALFORMED),
    (b"CRAM-MD5", [b64(b"nodigest")], smtpauth.MALFORMED),
    (b"CRAM-MD5", [b"*"], smtpauth.CANCELED),
    (b"LOGIN", [b64(b"joe\0x")], smtpauth.MALFORMED),
    (b"LOGIN", [b64(b"joe"), b64(b"digest\0<1.2@x>")], smtpauth.MALFORMED),
    (b"LOGIN " + b64(b"joe\0"), [], smtpauth.MALFORMED),
    (b"CRAM-MD5", [b64(b"joe\0digest\0<1.2@x> 0123abcd")], smtpauth.MALFORMED),
    (b"CRAM-MD5", [b64(b"joe 0123\0abcd")], smtpauth.MALFORMED),
])
def test_response_errors(mech, lines, reply):
    """
    '*' cancels with 501 canceled; empty lines, bad base64 or empty fields are malformed,
    and so is a NUL in a LOGIN or CRAM-MD5 name, password or digest (RFC 4616 §2 forbids
    it in PLAIN, where it separates the fields): on fd 3 it would end the field early, and
    the rest would be read as the next field, e.g. a replayed CRAM-MD5 challenge.
    """
    step, ex = start(mech)
    for line in lines:
        step = ex.respond(line)
    assert step == Done(reply)


def test_throttle_doubles_per_connection_and_ip():
    """Delays double with the failures of a connection or of its IP, up to the ceiling."""
    clock = task.Clock()
    t = smtpauth.AuthThrottle(clock, base=2, ceiling=30, memory=900)
    assert t.failed("10.0.0.1", 1) == 2
    assert t.failed("10.0.0.1", 1) == 4  # a second connection from the same IP
    assert t.failed("10.0.0.2", 1) == 2
    assert t.failed("10.0.0.2", 3) == 8  # connection's own count dominates
    for _ in range(10):
        delay = t.failed("10.0.0.1", 1)
    assert delay == 30


def test_throttle_forgets_after_memory_and_bounds_ips():
    """An IP's failures are forgotten after the memory window; at most `tracked` IPs kept."""
    clock = task.Clock()
    t = smtpauth.AuthThrottle(clock, base=1, ceiling=100, memory=60, tracked=2)
    t.failed("a", 1)
    t.failed("a", 1)
    assert t.recentFailures("a") == 2
    clock.advance(61)
    assert t.recentFailures("a") == 0
    t.failed("a", 1)
    t.failed("b", 1)
    t.failed("c", 1)
    assert t.recentFailures("a") == 0 and t.recentFailures("c") == 1


def test_throttle_paces_the_checks_of_a_failing_ip():
    """
    Once an IP has failed, its checks start one per current delay whatever their outcome,
    so a client that hangs up instead of waiting for its 535 (a 235 would have come at
    once), or that tries on many connections at the same time, guesses no faster than
    one that waits.  Asking reserves nothing: sessions that ask and hang up hold up no
    one.  A client that waited for its 535 is not held again, and an IP that never failed
    is never held.
    """
    clock = task.Clock()
    t = smtpauth.AuthThrottle(clock, base=2, ceiling=30, memory=900)
    assert t.admit("10.0.0.9") == 0
    assert t.failed("10.0.0.1", 1) == 2
    clock.advance(0.6)  # hung up without waiting for the 535, and came back
    for _ in range(100):  # and again, on many connections, hanging up each time
        assert t.admit("10.0.0.1") == pytest.approx(1.4)
    assert t.admit("10.0.0.9") == 0
    clock.advance(1.4)
    assert t.admit("10.0.0.1") == 0
    t.started("10.0.0.1")
    assert t.admit("10.0.0.1") == 2  # a second connection waits for the next turn
    assert t.failed("10.0.0.1", 1) == 4  # the check failed too
    assert t.admit("10.0.0.1") == 4
    clock.advance(4)
    assert t.admit("10.0.0.1") == 0  # waited for its 535
