"""
This host's IPv4 addresses (qmail's ipme), for localiphost and the self-MX rule.

Read once from the kernel's interface list (SIOCGIFCONF, as qmail's ipme.c does);
C{0.0.0.0} and C{127.0.0.1} always count (netqmail treats 0.0.0.0 as local).
"""

import array
import fcntl
import socket
import struct

SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40


def interfaceAddresses():
    """Dotted IPv4 addresses of the configured interfaces, as bytes; raises C{OSError}."""
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        size = 64 * _IFREQ_SIZE
        buf = array.array("B", b"\0" * size)
        addr, _ = buf.buffer_info()
        result = fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack("iL", size, addr))
        used = struct.unpack("iL", result)[0]
        data = buf.tobytes()[:used]
        for off in range(0, used, _IFREQ_SIZE):
            found.add(socket.inet_ntoa(data[off + 20:off + 24]).encode())
    return found


ALWAYS = frozenset({b"0.0.0.0", b"127.0.0.1"})


def ipmeOrNone():
    """
    This host's addresses (bytes), or C{None} when the interfaces cannot be read:
    qmail-smtpd then answers C{421 unable to figure out my IP addresses} instead of
    guessing which bracketed addresses are this host's.
    """
    try:
        return ALWAYS | interfaceAddresses()
    except OSError:
        return None


def ipme(extra=()):
    """This host's addresses plus C{extra}; only the loopback pair when the interfaces
    cannot be read (the self-MX rule then still knows those)."""
    return (ipmeOrNone() or ALWAYS) | set(extra)
