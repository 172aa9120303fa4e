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
    """Dotted IPv4 addresses of the configured interfaces, as bytes; empty on error."""
    found = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            size = 64 * _IFREQ_SIZE
            buf = array.array("B", b"\0" * size)
            addr, _ = buf.buffer_info()
            result = fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack("iL", size, addr))
            used = struct.unpack("iL", result)[0]
            data = buf.tobytes()[:used]
            for off in range(0, used, _IFREQ_SIZE):
                found.add(socket.inet_ntoa(data[off + 20:off + 24]).encode())
    except OSError:
        pass
    return found


def ipme(extra=()):
    """The set of this host's addresses (bytes), plus C{extra}."""
    return frozenset(interfaceAddresses() | {b"0.0.0.0", b"127.0.0.1"} | set(extra))
