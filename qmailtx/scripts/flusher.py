"""
C{qmailtx flusher QUEUEDIR}: the flusher process (L{qmailtx.flusher}), started by the daemon
and by each receiver with its socket on fd 3; not run by hand.
"""

from qmailtx.flusher import main

__all__ = ["main"]
