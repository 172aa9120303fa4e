"""
Transcript dialogs replayed against a live `twistd qmail` (DESIGN.md §4, tests/dialogs).

A `.dialog` file: `> text` is sent with CRLF; `>raw text` is sent as written with `\\r`/`\\n`
escapes and no CRLF added; `< text` must be the next reply line exactly; `<~ text` a prefix of
it; `< (closed)` the server's close; `#` lines are comments.
"""

import pathlib
import socket

import pytest

from qmailtx.rootdir import createRoot
from tests.service.daemon import Daemon

HERE = pathlib.Path(__file__).parent
DIALOGS = sorted(HERE.glob("*/*.dialog"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialogs") / "root"
    createRoot(str(root), "mx.example.com")
    for name in ("concurrencylocal", "concurrencyremote"):
        (root / "control" / name).write_text("0\n")
    (root / "rules" / "smtp").write_text(":allow\n")
    (root / "control" / "badmailfrom").write_text("bad@example.com\n")
    d = Daemon(root).start()
    yield d
    d.stop()


def replay(port, script):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = b""

    def nextLine():
        nonlocal buf
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        return line

    try:
        for number, text in enumerate(script.splitlines(), 1):
            where = f"line {number}: {text!r}"
            if not text or text.startswith("#"):
                continue
            if text.startswith(">raw "):
                sock.sendall(text[5:].encode().decode("unicode_escape").encode("latin-1"))
            elif text.startswith(">"):
                sock.sendall(text[2:].encode() + b"\r\n")
            elif text == "< (closed)":
                assert nextLine() is None, where
            elif text.startswith("<~ "):
                line = nextLine()
                assert line is not None and line.startswith(text[3:].encode()), (where, line)
            elif text.startswith("< "):
                assert nextLine() == text[2:].encode(), where
            else:
                raise ValueError(f"bad dialog {where}")
    finally:
        sock.close()


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(server, path):
    """Each transcript in tests/dialogs/<service>/ replays exactly against a live listener."""
    replay(server.ports[path.parent.name], path.read_text())
