"""
A scripted SMTP server for client tests: replies come from a table, so a test can make a
server say anything at any step (over iosim, or listening on 127.0.0.x for live tests).
"""

from twisted.internet.protocol import Factory, Protocol

DEFAULT = {
    "greeting": b"220 fake ESMTP\r\n",
    "EHLO": b"250-fake\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n",
    "HELO": b"250 fake\r\n",
    "MAIL": b"250 ok\r\n",
    "RCPT": b"250 ok\r\n",
    "DATA": b"354 go ahead\r\n",
    "dot": b"250 ok 1732217160 qp 99\r\n",
    "RSET": b"250 flushed\r\n",
    "QUIT": b"221 bye\r\n",
}


class ScriptedServer(Protocol):
    """
    Answers each command line from C{script} (verb => reply bytes, or a list used one
    reply per use, or C{None} to hang up instead).  C{script["dot"]} answers the end of
    the data.  Records every line received in C{lines} and each message in C{messages}.
    """

    def __init__(self, script=None):
        self.script = dict(DEFAULT, **(script or {}))
        self.lines = []
        self.messages = []
        self._buffer = b""
        self._data = False

    def connectionMade(self):
        self.reply("greeting")

    def reply(self, key):
        """Send the scripted reply for C{key}; the bytes sent, or C{None} after hanging up."""
        answer = self.script.get(key, b"502 unimplemented\r\n")
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if answer is None:
            self.transport.loseConnection()
            return None
        self.transport.write(answer)
        return answer

    def dataReceived(self, data):
        self._buffer += data
        while True:
            if self._data:
                end = (b"\r\n" + self._buffer).find(b"\r\n.\r\n")
                if end == -1:
                    return
                self.messages.append(self._buffer[:end])
                self._buffer = self._buffer[end + 3:]
                self._data = False
                if self.reply("dot") is None:
                    return
                continue
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            self._buffer = rest
            self.lines.append(line)
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
            answer = self.reply(verb)
            if answer is None:
                return
            if verb == "DATA" and answer[:1] == b"3":
                self._data = True


class ScriptedFactory(Factory):
    def __init__(self, script=None):
        self.script = script
        self.servers = []

    def buildProtocol(self, addr):
        p = ScriptedServer(dict(self.script or {}))
        p.factory = self
        self.servers.append(p)
        return p
