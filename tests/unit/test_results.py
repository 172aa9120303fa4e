"""qmailtx.results: qmail's spellings of an outcome, derived in one place."""

from qmailtx.results import QQ_SHUTTING_DOWN, fromReport, qqExitCode, qqExitFailure, smtpReply


def test_qqExitCodeRoundTrips():
    """A queue program's exit code and qmail's text for it map back and forth."""
    for code in (51, 53, 54, 62, 81):
        assert qqExitCode(qqExitFailure(code)) == code
    assert qqExitCode(qqExitFailure(11)) == 11


def test_shuttingDownIsTemporaryAndExits71():
    """A stopping daemon's refusal: 451 over SMTP, and exit 71 (qmail's "temporarily
    rejected") from a queue program, never 81's "internal bug"."""
    failure = fromReport(QQ_SHUTTING_DOWN)
    assert failure.temporary
    assert smtpReply(failure) == b"451 qq shutting down, try again later (#4.3.2)"
    assert qqExitCode(failure) == 71
