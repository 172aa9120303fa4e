"""
Recipient rewriting as qmail-send does it when it reads C{todo/} (spec/queue.md §5), and
the per-delivery VERP sender (§8).

Pure: the control lists arrive as arguments (L{Rewriter.fromControls} reads them from a
L{ControlDir}); the result says which channel gets the address.  Must not import the
queue, delivery code or Twisted.
"""

from dataclasses import dataclass

LOCAL, REMOTE = "local", "remote"


def virtualdomainsMap(lines):
    """
    C{key:prepend} lines as a dict of lowercased key to prepend; lines without C{:} are
    ignored, and for a repeated key the last line wins (qmail's constmap lookup order).
    """
    out = {}
    for line in lines:
        colon = line.find(b":")
        if colon != -1:
            out[line[:colon].lower()] = line[colon + 1:]
    return out


@dataclass(frozen=True)
class Rewriter:
    """
    The rewriting controls of one qmail-send configuration.

    @ivar locals: lowercased domains delivered locally.
    @ivar percenthack: lowercased domains where C{%} routing is honoured.
    @ivar virtualdomains: lowercased key -> prepend (see L{virtualdomainsMap}).
    """

    envnoathost: bytes
    locals: frozenset
    percenthack: frozenset = frozenset()
    virtualdomains: dict = None

    @classmethod
    def fromControls(cls, controls):
        """
        Read C{envnoathost}, C{locals}, C{percenthack} and C{virtualdomains}; raises
        L{qmailtx.control.ControlError}, and C{ValueError} when neither C{locals} nor C{me}
        exists (qmail-send then refuses to start).
        """
        me = controls.me()
        localsList = controls.list("locals")
        if localsList is None:
            if me is None:
                raise ValueError("neither control/locals nor control/me exists")
            localsList = [me]
        return cls(
            envnoathost=controls.lineOrMe("envnoathost", b"envnoathost"),
            locals=frozenset(x.lower() for x in localsList),
            percenthack=frozenset(x.lower() for x in controls.list("percenthack", [])),
            virtualdomains=virtualdomainsMap(controls.list("virtualdomains", [])),
        )

    def rewrite(self, recipient):
        """C{(LOCAL or REMOTE, address)} for one envelope recipient."""
        addr = recipient
        at = addr.rfind(b"@")
        if at == -1:
            at = len(addr)
            addr = addr + b"@" + self.envnoathost
        while addr[at + 1:].lower() in self.percenthack:
            percent = addr.rfind(b"%", 0, at)
            if percent == -1:
                break
            addr = addr[:percent] + b"@" + addr[percent + 1:at]
            at = percent
        at = addr.rfind(b"@")
        if addr[at + 1:].lower() in self.locals:
            return LOCAL, addr
        vdoms = self.virtualdomains or {}
        for i in range(len(addr) + 1):
            if i == 0 or i == at + 1 or i == len(addr) or (i > at and addr[i:i + 1] == b"."):
                prepend = vdoms.get(addr[i:].lower())
                if prepend is None:
                    continue
                if not prepend:
                    break
                return LOCAL, prepend + b"-" + addr
        return REMOTE, addr


def verpSender(sender, recipient):
    """
    The envelope sender of one delivery: for a VERP sender C{P@H-@[]} and recipient
    C{box@dom}, C{Pbox=dom@H}; any other sender (or a recipient without C{@}) unchanged.
    """
    if not sender.endswith(b"-@[]"):
        return sender
    end = len(sender) - 4
    at = sender.rfind(b"@", 0, end)
    ratAt = recipient.rfind(b"@")
    if at == -1 or ratAt == -1:
        return sender
    return (sender[:at] + recipient[:ratAt] + b"=" + recipient[ratAt + 1:] + b"@"
            + sender[at + 1:end])
