"""
TCP_NODELAY for every connection qmailtx serves or opens (DESIGN.md §2): a small reply
followed by data must not wait for the peer's delayed ACK.
"""


def setNoDelay(transport):
    """Turn on TCP_NODELAY where C{transport} is TCP (test doubles and pipes are left alone)."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass
