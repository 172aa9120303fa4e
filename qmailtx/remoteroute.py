"""
Where remote mail goes: the pure parts of qmail-remote's address selection
(spec/remote.md §2, §3, §6, §7).

Route lookup in C{smtproutes}/C{qmtproutes}, literal addresses, MX ordering with equal
preferences shuffled, MXPS, the connect-timeout table, and the STARTTLS policy for a
destination.  No sockets and no DNS here (the resolver is L{qmailtx.remote}'s); the TLS
policy reads certificate files from C{control/}.  Writes nothing.
"""

import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Route:
    """
    An artificial route: connect only to C{relay} (a name or a literal address) on
    C{port}; C{credentials} (an L{qmailtx.smtpdialogue.Credentials}) for AUTH, or C{None}.
    """

    relay: bytes
    port: int
    credentials: object = None


@dataclass(frozen=True)
class Candidate:
    """One address to try: its MX preference, where to connect, the name it came from."""

    preference: int
    address: bytes
    port: int
    name: bytes
    qmtp: bool = False


def lookupKey(table, host):
    """
    The value for C{host} in a C{{key: value}} table, keys tried as qmail-remote tries
    smtproutes: the host, each suffix starting at a C{.} (longest first), then the empty
    key.  C{None} when nothing matches.
    """
    host = host.lower()
    for i in range(len(host) + 1):
        if i == 0 or i == len(host) or host[i:i + 1] == b".":
            value = table.get(host[i:])
            if value is not None:
                return value
    return None


def keyTable(lines, needColon=True):
    """
    C{key:value} lines to a table with lowercased keys.  The last line for a key wins, as in
    qmail: constmap puts each later line at the head of its hash chain, and qmail-remote
    (smtproutes), the QMTP patches (qmtproutes) and qmail-tls (tlsdestinations) all read
    their files through it.
    """
    table = {}
    for line in lines:
        key, sep, value = line.partition(b":")
        if sep or not needColon:
            table[key.lower()] = value
    return table


def findRoute(lines, host, defaultPort):
    """
    The route for C{host} from the lines of a routes file, or C{None} (MX lookup); an
    empty relay means "no route".  A line reads C{domain:relay[:port][|user|password]}.
    """
    value = lookupKey(keyTable(lines), host) if lines else None
    return None if value is None else parseRoute(value, defaultPort)


def parseRoute(value, defaultPort):
    """C{relay[:port][|user|password]} to a L{Route}, or C{None} for an empty relay."""
    from qmailtx.smtpdialogue import Credentials

    credentials = None
    parts = value.split(b"|", 2)
    if len(parts) == 3:
        credentials = Credentials(parts[1], parts[2])
    relay, sep, portText = parts[0].partition(b":")
    if not relay:
        return None
    port = defaultPort
    if sep:
        digits = len(portText) - len(portText.lstrip(b"0123456789"))
        port = int(portText[:digits]) if digits else 0
    return Route(relay, port, credentials)


def literalAddress(host):
    """C{1.2.3.4} or C{[1.2.3.4]} (or C{[IPv6:...]}) to the address, else C{None}."""
    text = host
    if text.startswith(b"[") and text.endswith(b"]"):
        text = text[1:-1]
        if text[:5].lower() == b"ipv6:":
            text = text[5:]
    try:
        parsed = ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if parsed.version == 4 and text.count(b".") != 3:
        return None
    return str(parsed).encode("ascii")


def orderExchangers(exchangers, rng):
    """C{(preference, name)} pairs by preference, equal preferences in random order."""
    shuffled = list(exchangers)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda pair: pair[0])


def mxpsQMTP(preference):
    """MXPS: preferences 12800-13055 with C{(p - 12800) % 16 == 1} announce QMTP."""
    return 12800 <= preference <= 13055 and (preference - 12800) % 16 == 1


TIMEOUT_RECORDS = 64
"""Entries in qmail's lock/tcpto (1024 bytes of 16-byte records)."""


class TimeoutTable:
    """
    qmail-tcpto's rule in memory: an address whose connects timed out at least twice,
    the last time less than (60 + pid mod 32) * 64 seconds ago, is skipped; timeouts
    less than 120 s apart count once; a connect that does not time out clears it.
    """

    def __init__(self, clock, pid):
        self._clock = clock
        self._hold = (60 + (pid & 31)) << 6
        self._records = {}

    def isBad(self, address):
        record = self._records.get(address)
        if record is None or record[0] < 2:
            return False
        return self._clock.seconds() - record[1] < self._hold

    def failed(self, address, timedOut):
        record = self._records.get(address)
        if not timedOut:
            if record is not None:
                record[0] = 0
            return
        now = self._clock.seconds()
        if record is None:
            if len(self._records) >= TIMEOUT_RECORDS:
                victim = min(self._records,
                             key=lambda a: self._records[a][1] + self._records[a][0] * 1024)
                del self._records[victim]
            self._records[address] = [1, now]
            return
        if record[0] and now < record[1] + 120:
            return
        record[0] = min(record[0] + 1, 10)
        record[1] = now

    def clear(self):
        """qmail-tcpok."""
        self._records.clear()


def _safeName(name):
    return bool(name) and b"/" not in name and not name.startswith(b".") and b"\0" not in name


def tlsPolicy(controls, domain, serverName):
    """
    The L{qmailtx.smtpdialogue.TLSPolicy} for a connection to C{serverName} carrying mail
    for C{domain}, or C{None} for no STARTTLS at all.

      - C{control/notlshosts/<server>} exists: no TLS.
      - C{control/tlsdestinations} has C{domain[:cafile]} for the domain (keys matched as
        in smtproutes): TLS required, certificate verified against C{cafile} (relative to
        C{control/}; empty: the system's roots) and the server's name.
      - C{control/tlshosts/<server>.pem} exists (qmail-tls): required, verified against it.
      - otherwise: STARTTLS when offered, certificate not checked.
    C{control/clientcert.pem} (key and certificate) is presented when it exists.
    """
    from qmailtx.smtpdialogue import TLSPolicy

    base = controls.path
    safe = _safeName(serverName)
    if safe and controls.exists(os.path.join("notlshosts", serverName.decode("latin-1"))):
        return None
    clientPath = os.path.join(base, "clientcert.pem")
    clientPath = clientPath if controls.exists("clientcert.pem") else None
    caFile = None
    required = False
    lines = controls.list("tlsdestinations", [])
    if lines:
        value = lookupKey(keyTable(lines, needColon=False), domain)
        if value is not None:
            required = True
            caFile = os.path.join(base, value.decode("latin-1")) if value else ""
    if not required and safe:
        name = os.path.join("tlshosts", serverName.decode("latin-1") + ".pem")
        if controls.exists(name):
            required, caFile = True, os.path.join(base, name)
    if required:
        factory = _verifyingOptions(serverName.decode("ascii", "replace"), caFile,
                                    _stamp(caFile), clientPath, _stamp(clientPath))
    else:
        factory = _plainOptions(clientPath, _stamp(clientPath))
    return TLSPolicy(factory, required, serverName)


def _stamp(path):
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return st and (st.st_ino, st.st_mtime_ns, st.st_size)


def _clientCertificate(path):
    from twisted.internet import ssl

    if path is None:
        return None
    with open(path, "rb") as f:
        return ssl.PrivateCertificate.loadPEM(f.read())


@lru_cache(maxsize=64)
def _plainOptions(clientPath, stamp):
    from twisted.internet import ssl

    cert = _clientCertificate(clientPath)
    if cert is None:
        return ssl.CertificateOptions()
    return ssl.CertificateOptions(privateKey=cert.privateKey.original,
                                  certificate=cert.original)


@lru_cache(maxsize=256)
def _verifyingOptions(name, caFile, caStamp, clientPath, clientStamp):
    from twisted.internet import ssl

    if caFile:
        with open(caFile, "rb") as f:
            pem = f.read()
        marker = b"-----END CERTIFICATE-----"
        blocks = [b + marker for b in pem.split(marker) if b"-----BEGIN CERTIFICATE" in b]
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(name, trustRoot=trust,
                                   clientCertificate=_clientCertificate(clientPath))
