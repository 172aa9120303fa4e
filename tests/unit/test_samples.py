"""The shipped samples in etc/ are valid: rules compile, list files parse as qmail reads them."""

import pathlib

import pytest

from qmailtx.control import parseList
from qmailtx.rules import Rules

ETC = pathlib.Path(__file__).resolve().parents[2] / "etc"


@pytest.mark.parametrize("name", ["smtp", "qmtp", "qmqp", "pop3"])
def test_rules_samples_compile(name):
    """Every sample rules file parses with tcprules syntax and ends in a catch-all rule."""
    rules = Rules.fromText((ETC / "rules" / name).read_bytes())
    assert rules.lookup("203.0.113.9").key == ""


def test_smtp_sample_relays_loopback_only():
    """The SMTP sample gives RELAYCLIENT to loopback, denies the listed spammer."""
    rules = Rules.fromText((ETC / "rules" / "smtp").read_bytes())
    assert rules.lookup("127.0.0.1").env == {"RELAYCLIENT": ""}
    assert rules.lookup("192.0.2.66").deny
    assert "RELAYCLIENT" not in rules.lookup("203.0.113.9").env


def test_smtp_sample_office_must_authenticate():
    """The office network, which its comment says must authenticate, gets AUTH required
    and no RELAYCLIENT: a relay without AUTH would make the comment a lie."""
    rules = Rules.fromText((ETC / "rules" / "smtp").read_bytes())
    assert rules.lookup("10.1.2.3").env == {"SMTPAUTH": "!"}


@pytest.mark.parametrize("name", ["rcpthosts", "locals", "badmailfrom", "virtualdomains"])
def test_list_samples_have_entries(name):
    """Commented list samples still yield their entries and no comment lines."""
    entries = parseList((ETC / "control" / name).read_bytes())
    assert entries and not any(e.startswith(b"#") for e in entries)
