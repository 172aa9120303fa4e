"""
Helpers for the POP3 service tests: a checkpassword shell script honouring the interface,
a self-signed certificate, a raw line client, and a live POP3 listener on 127.0.0.1:0.
"""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

CHECKER = r"""#!/bin/sh
# checkpassword interface: fd 3 = login\0password\0timestamp\0; exit 1 bad, 111 temporary.
{ IFS= read -r login; IFS= read -r pass; IFS= read -r stamp; } <<END
$(head -c 512 <&3 | tr '\0' '\n')
END
exec 3<&-
line=$(grep -F -x -- "$login:$pass" "$0.db" || grep -F -x -- "$login:*" "$0.db") || exit 1
case "$login" in
  crash) kill -9 $$ ;;
  slow) echo $$ > "$0.slowpid"; exec sleep 60 ;;
esac
USER=$login HOME=$(dirname "$0")/home/$login SHELL=/bin/sh; export USER HOME SHELL
cd "$HOME" || exit 111
if [ -f "$HOME/.uid" ] && [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid="$(cat "$HOME/.uid")" --regid="$(cat "$HOME/.uid")" --clear-groups "$@"
fi
exec "$@"
"""


def makeChecker(directory, users):
    """Write the checker and its db (C{login:password} lines; password C{*} accepts any)."""
    path = os.path.join(directory, "checkpassword")
    with open(path, "w") as f:
        f.write(CHECKER)
    os.chmod(path, 0o755)
    with open(path + ".db", "w") as f:
        for login, password in users.items():
            f.write(f"{login}:{password}\n")
    return path


_CERT = None


def certificate():
    """A self-signed key+cert PEM for CN=localhost, made once per test run."""
    global _CERT
    if _CERT is None:
        d = tempfile.mkdtemp(prefix="qmailtx-cert-")
        pem = os.path.join(d, "servercert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-keyout", pem + ".key", "-out", pem + ".crt"],
            check=True, capture_output=True)
        with open(pem, "wb") as out:
            for part in (".key", ".crt"):
                with open(pem + part, "rb") as f:
                    out.write(f.read())
        _CERT = pem
    return _CERT


def clientContext():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def addMessage(maildirPath, sub, name, data, age=10):
    p = os.path.join(maildirPath, sub, name)
    with open(p, "wb") as f:
        f.write(data)
    t = time.time() - age
    os.utime(p, (t, t))
    return p


class Raw:
    """A raw POP3 client: send lines, read CRLF lines, byte-exact."""

    def __init__(self, port, tls=False, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        if tls:
            self.sock = clientContext().wrap_socket(self.sock)
        self.f = self.sock.makefile("rb")

    def line(self):
        return self.f.readline()

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.line()

    def multi(self):
        lines = []
        while True:
            line = self.line()
            if line in (b".\r\n", b""):
                return lines
            lines.append(line)

    def starttls(self):
        self.sock = clientContext().wrap_socket(self.sock)
        self.f = self.sock.makefile("rb")

    def closed(self):
        """True when the server has closed the connection (EOF within the timeout)."""
        try:
            return self.f.read() == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self):
        self.sock.close()


def removeTree(path):
    shutil.rmtree(path, ignore_errors=True)


def retrieveFifo(r, fifo, then):
    """
    On a logged-in L{Raw} session: C{RETR 1} (message 1 being the FIFO C{fifo}), then the
    command C{then}; their replies, or C{None} if the server hung on the FIFO (which is then
    opened for writing once, to free whatever waits on it).  Closes the session.
    """
    r.sock.settimeout(5)
    try:
        out = r.cmd(b"RETR 1"), r.cmd(then)
    except socket.timeout:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        out = None
    r.close()
    return out
