"""
Child processes the daemon started through C{ProcessProtocol} (delivery workers, receivers,
checkpassword, POP3 sessions): the one way to kill one that may have exited meanwhile.
Decides nothing; imports nothing of qmailtx.
"""

from twisted.internet import error


def killChild(transport):
    """SIGKILL the process behind C{transport}; one that is already gone is no error."""
    try:
        transport.signalProcess("KILL")
    except (error.ProcessExitedAlready, OSError):
        pass
