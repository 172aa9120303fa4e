"""
When qmail-send tries a message again, and when it gives up (spec/queue.md §6).

Pure arithmetic on Unix times; the caller passes C{now} (from its clock) and the message's
birth (the C{info} file's mtime).  Must not read clocks or files itself.
"""

import math

from qmailtx.bounce import TOO_LONG_IN_QUEUE
from qmailtx.results import PermFailure, TempFailure

LOCAL_SKIP = 10
"""chanskip for the local channel: attempts at birth + (10k)^2 seconds."""

REMOTE_SKIP = 20
"""chanskip for the remote channel: attempts at birth + (20k)^2 seconds."""

DEFAULT_QUEUELIFETIME = 604800

_SQRT_LIMIT = 65535
"""qmail's C{squareroot()} computes 16 bits; times beyond 136 years saturate there."""


def nextRetry(birth, now, skip):
    """C{birth + (isqrt(now - birth) + skip)^2}; a birth in the future counts as C{now}."""
    n = 0 if birth > now else min(math.isqrt(int(now - birth)), _SQRT_LIMIT)
    n += skip
    return birth + n * n


def isDying(birth, now, queuelifetime=DEFAULT_QUEUELIFETIME):
    """Has the message outlived C{queuelifetime} at the start of this pass?"""
    return now > birth + queuelifetime


def expire(result, dying):
    """
    A delivery result as qmail-send records it: while dying, a temporary failure becomes
    permanent with the "too long" line appended to its text.
    """
    if dying and isinstance(result, TempFailure):
        return PermFailure(result.text + TOO_LONG_IN_QUEUE)
    return result
