"""
Which observer C{twistd qmail} logs through (L{qmailtx.tap.Options}): qmailtx's stamped one
exactly where twistd would write its own lines to standard output, twistd's choice elsewhere.
"""

import pytest
from twisted.scripts.twistd import ServerOptions

from qmailtx.log import multilog, stamped


def parse(argv):
    config = ServerOptions()
    config.parseOptions(argv)
    assert config.subCommand == "qmail"
    return config


def test_foregroundOnStandardOutputIsStamped():
    """twistd -n qmail (and -n --logfile -) log through qmailtx.log.stamped."""
    assert parse(["-n", "qmail"])["logger"] is stamped
    assert parse(["-n", "--logfile", "-", "qmail"])["logger"] is stamped


@pytest.mark.parametrize("argv, expected", [
    (["-n", "--logger", "qmailtx.log.multilog", "qmail"], multilog),
    (["-n", "--logfile", "/var/log/qmail.log", "qmail"], None),
    (["-n", "--syslog", "qmail"], None),
    (["qmail"], None),
])
def test_explicitChoicesStayTwistds(argv, expected):
    """--logger, a log file, syslog and daemon mode are left to twistd as given."""
    assert parse(argv)["logger"] is expected
