"""
Round trips against ucspi-tcp's own C{tcprules}/C{tcprulescheck} (Debian package
C{ucspi-tcp}): our compiler writes the same cdb bytes, and our reader and checker answer
the same way as the real ones for cdbs written by either (spec/rules.md, spec/tools.md §6).

Without the binaries these tests skip, except under C{CI}, where they fail.
"""

import io
import os
import random
import shutil
import subprocess
import sys

import pytest

from qmailtx.rules import Rules, RulesError, RulesSource, parseLine
from qmailtx.scripts import tcprules, tcprulescheck


def realTools():
    """Paths of the real tools: C{(tcprules, tcprulescheck)}; fails under CI if missing."""
    found = (shutil.which("tcprules"), shutil.which("tcprulescheck"))
    if None in found:
        message = "ucspi-tcp's tcprules/tcprulescheck not found (apt-get install -y ucspi-tcp)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def runReal(argv, stdin=b"", env=None):
    p = subprocess.run(argv, input=stdin, capture_output=True, env=env or {}, timeout=30)
    return p.returncode, p.stdout, p.stderr


def runOurs(argv, stdin=b""):
    """Our tcprules in-process, renamed to read as the real one."""
    err = io.BytesIO()
    code = tcprules.main(["tcprules"] + argv, stdin=io.BytesIO(stdin), stderr=err)
    return code, b"", err.getvalue()


def runOursCheck(path, env):
    out, err = io.BytesIO(), io.BytesIO()
    code = tcprulescheck.main(["tcprulescheck", path], environ=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


_ADDRESS_PARTS = [
    b"1", b"2", b"10", b"127", b"255", b"300", b"04", b".", b".", b"-", b"-", b"=", b"@",
    b"a", b"x.y", b" ", b"#", b"18446744073709551617", b"9", b"\xff", b"\0",
]
_INSTRUCTIONS = [b"allow", b"allow", b"deny", b"deny", b"Allow", b"allo", b"", b"denyallow"]
_NAMES = [b"A", b"RELAYCLIENT", b" B", b"", b"TCPREMOTEHOST", b"x y"]
_VALUES = [b"", b"1", b"@fixme", b"a b", b"q", b"\0", b"\"", b"x=y"]
_TAILS = [b"", b"", b"", b" ", b"\t ", b"\r", b"#x", b",", b"junk"]


def randomLine(rnd):
    """One rules line, mostly well-formed, often broken in the ways tcprules cares about."""
    if rnd.random() < 0.05:
        return rnd.choice([b"", b"# comment:deny", b"no colon", b"  #x:allow"])
    address = b"".join(rnd.choice(_ADDRESS_PARTS) for _ in range(rnd.randint(0, 6)))
    out = [address, b":", rnd.choice(_INSTRUCTIONS)]
    for _ in range(rnd.randint(0, 3)):
        quote = rnd.choice(b"\"\"/'x2")
        item = [b",", rnd.choice(_NAMES), b"=", bytes([quote]), rnd.choice(_VALUES)]
        if rnd.random() > 0.1:
            item.append(bytes([quote]))
        out.extend(item)
    out.append(rnd.choice(_TAILS))
    return b"".join(out)


def compileBoth(real, tmp_path, text):
    """Run both compilers on C{text}; their results and output paths."""
    theirs = runReal([real[0], str(tmp_path / "real.cdb"), str(tmp_path / "real.tmp")], text)
    ours = runOurs([str(tmp_path / "ours.cdb"), str(tmp_path / "ours.tmp")], text)
    return theirs, ours


def test_randomLinesCompileIdentically(tmp_path):
    """
    For hundreds of generated lines, ours and the real tcprules agree on exit code and
    message, and on success write byte-identical cdbs.
    """
    real = realTools()
    rnd = random.Random(20240521)
    outcomes = set()
    for i in range(400):
        line = randomLine(rnd) + b"\n"
        for name in ("real.cdb", "ours.cdb"):
            if (tmp_path / name).exists():
                os.unlink(tmp_path / name)
        theirs, ours = compileBoth(real, tmp_path, line)
        assert ours == theirs, line
        if theirs[0] == 0:
            assert (tmp_path / "ours.cdb").read_bytes() == (
                tmp_path / "real.cdb"
            ).read_bytes(), line
        outcomes.add(theirs[0])
    assert outcomes == {0, 100}


def test_wholeFileCompilesIdentically(tmp_path):
    """A long file of valid rules, ranges and duplicates gives the same cdb bytes."""
    real = realTools()
    rnd = random.Random(7)
    lines = [
        b'127.:allow,RELAYCLIENT=""',
        b"10.0.0.:allow,RELAYCLIENT=\"\",SMTPAUTH=\"\"",
        b'1.2.3.6:allow,RELAYCLIENT="@fixme"',
        b"=.spammer.example:deny",
        b"192.168.0-255.:deny",
        b"joe@=h.example:allow,X=/1/",
    ]
    while len(lines) < 300:
        line = randomLine(rnd)
        try:
            parseLine(line)
        except RulesError:
            continue
        lines.append(line)
    lines.append(b":allow")
    text = b"\n".join(lines) + b"\n"
    theirs, ours = compileBoth(real, tmp_path, text)
    assert theirs == ours == (0, b"", b"")
    assert (tmp_path / "ours.cdb").read_bytes() == (tmp_path / "real.cdb").read_bytes()


CLIENTS = [
    {},
    {b"TCPREMOTEIP": b"127.0.0.1"},
    {b"TCPREMOTEIP": b"10.0.0.9", b"TCPREMOTEHOST": b"mx.spammer.example"},
    {b"TCPREMOTEIP": b"8.8.8.8", b"TCPREMOTEHOST": b"mx.spammer.example"},
    {b"TCPREMOTEIP": b"1.2.3.6", b"TCPREMOTEHOST": b""},
    {b"TCPREMOTEIP": b"5.5.5.5", b"TCPREMOTEHOST": b"h.example", b"TCPREMOTEINFO": b"joe"},
    {b"TCPREMOTEIP": b"5.5.5.5", b"TCPREMOTEINFO": b"joe"},
    {b"TCPREMOTEIP": b"5.5.5.6", b"TCPREMOTEHOST": b"a.b.c"},
    {b"TCPREMOTEIP": b"192.168.7.1"},
    {b"TCPREMOTEIP": b"9.9.9.9", b"TCPREMOTEHOST": b"Upper.Example"},
]

RULES = (
    b'127.:allow,RELAYCLIENT=""\n'
    b'10.0.0.:allow,RELAYCLIENT="",SMTPAUTH=""\n'
    b'1.2.3.6:allow,RELAYCLIENT="@fixme",NOEQ=""\n'
    b"=.spammer.example:deny\n"
    b"joe@5.5.5.5:allow,IDENT=/joe/\n"
    b"joe@=h.example:deny\n"
    b'=.b.c:allow,A="1",B="2"\n'
    b'192.168.0-255.:allow,BEFORE="x",Y=//\n'
    b"192.168.7.:deny\n"
    b'=Upper.Example:deny,AFTER="deny"\n'
    b"=:allow,NAMED=\"1\"\n"
    b':deny,LAST="1"\n'
)


@pytest.mark.parametrize("compiler", ["real", "ours"])
def test_checkersAgree(tmp_path, compiler):
    """
    On a cdb written by either compiler, our tcprulescheck prints what the real one
    prints, and L{Rules} (from the cdb and from the text) decides the same.
    """
    real = realTools()
    path = tmp_path / "r.cdb"
    if compiler == "real":
        assert runReal([real[0], str(path), str(tmp_path / "r.tmp")], RULES)[0] == 0
    else:
        assert runOurs([str(path), str(tmp_path / "r.tmp")], RULES)[0] == 0
    fromCdb = RulesSource(str(path)).current()
    fromText = Rules.fromText(RULES)
    for env in CLIENTS:
        theirs = runReal([real[1], str(path)], env=env)
        assert runOursCheck(str(path), env) == theirs, env
        assert theirs[0] == 0
        args = (
            env.get(b"TCPREMOTEIP", b"0.0.0.0"),
            env.get(b"TCPREMOTEHOST"),
            env.get(b"TCPREMOTEINFO"),
        )
        match = fromCdb.lookup(*args)
        assert match == fromText.lookup(*args)
        assert match.deny == theirs[1].endswith(b"deny connection\n"), env
        for name, value in match.env.items():
            if not match.deny:
                assert b"set environment variable %s=%s\n" % (
                    name.encode(), value.encode()) in theirs[1]


def test_errorsMatch(tmp_path):
    """Usage, create, input, move and parse errors: same message and exit code."""
    real = realTools()
    d = tmp_path
    (d / "isdir").mkdir()
    (d / "isdir" / "x").write_bytes(b"")
    cases = [
        ([], b"x:allow\n"),
        ([str(d / "a.cdb")], b"x:allow\n"),
        ([str(d / "a.cdb"), str(d / "no" / "a.tmp")], b"x:allow\n"),
        ([str(d / "a.cdb"), str(d / "no" / "a.tmp")], b"bad:allow#\n"),
        ([str(d / "isdir"), str(d / "a.tmp")], b"x:allow\n"),
        ([str(d / "a.cdb"), str(d / "a.tmp"), "extra"], b"x:allow\n"),
        ([str(d / "a.cdb"), str(d / "a.tmp")], b"x:allow\n1.2.3.4:allow\r\n"),
    ]
    for argv, text in cases:
        assert runOurs(argv, text) == runReal([real[0]] + argv, text), argv
    fd = os.open(d, os.O_RDONLY)
    try:
        theirs = subprocess.run([real[0], str(d / "b.cdb"), str(d / "b.tmp")],
                                stdin=fd, capture_output=True)
    finally:
        os.close(fd)
    err = io.BytesIO()
    ours = tcprules.main(["tcprules", str(d / "c.cdb"), str(d / "c.tmp")],
                         stdin=_DirectoryAsInput(), stderr=err)
    assert (theirs.returncode, theirs.stderr) == (ours, err.getvalue())
    assert theirs.stderr == b"tcprules: fatal: unable to read input: is a directory\n"


class _DirectoryAsInput:
    """Standard input that is a directory: every read fails with EISDIR."""

    def readline(self):
        raise IsADirectoryError(21, "Is a directory")


def test_parseErrorKeepsOldCdb(tmp_path):
    """A fatal line leaves the existing cdb exactly as it was, for both tools."""
    real = realTools()
    for run in (lambda argv, text: runReal([real[0]] + argv, text), runOurs):
        path = tmp_path / "r.cdb"
        assert run([str(path), str(tmp_path / "r.tmp")], b"1.2.3.4:deny\n")[0] == 0
        before = path.read_bytes()
        assert run([str(path), str(tmp_path / "r.tmp")], b":allow\nx:allow#\n")[0] == 100
        assert path.read_bytes() == before


def test_checkErrorsMatch(tmp_path):
    """tcprulescheck usage, missing, empty and non-cdb files: same message and code."""
    real = realTools()
    (tmp_path / "empty.cdb").write_bytes(b"")
    (tmp_path / "text").write_bytes(b"1.2.3.4:allow\n")
    for argv in ([], [str(tmp_path / "missing.cdb")], [str(tmp_path / "empty.cdb")],
                 [str(tmp_path / "text")]):
        out, err = io.BytesIO(), io.BytesIO()
        code = tcprulescheck.main(["tcprulescheck"] + argv, environ={}, stdout=out,
                                  stderr=err)
        assert (code, out.getvalue(), err.getvalue()) == runReal([real[1]] + argv), argv


def test_commandLine(tmp_path):
    """The installed C{qmailtx tcprules}/C{tcprulescheck} commands behave as the real ones."""
    real = realTools()
    env = {"PATH": os.environ.get("PATH", ""), "TCPREMOTEIP": "127.0.0.1",
           "PYTHONPATH": os.path.dirname(os.path.dirname(tcprules.__file__))}
    ours = [sys.executable, "-m", "qmailtx.scripts.main"]
    path = str(tmp_path / "r.cdb")

    def run(argv, stdin=b""):
        p = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)
        return p.returncode, p.stdout, p.stderr

    assert run(ours + ["tcprules", path, path + ".tmp"], RULES) == (0, b"", b"")
    assert run(ours + ["tcprulescheck", path]) == run([real[1], path]) == (
        0, b"rule 127.:\nset environment variable RELAYCLIENT=\nallow connection\n", b"")
    assert run(ours + ["tcprules"]) == run([real[0]]) == (
        100, b"", b"tcprules: usage: tcprules rules.cdb rules.tmp\n")
    assert run(ours + ["tcprules", path, path + ".tmp"], b"x:allow#\n")[0] == 100


def _dropToNobody():
    os.setgid(65534)
    os.setuid(65534)


def test_unreadableCdbUnprivileged(tmp_path):
    """
    An unreadable cdb is "access denied" (exit 111) for both checkers; under root the
    check runs with an unprivileged effective uid so the permission really applies.
    """
    real = realTools()
    path = tmp_path / "r.cdb"
    assert runOurs([str(path), str(tmp_path / "r.tmp")], RULES)[0] == 0
    path.chmod(0)
    root = os.getuid() == 0
    p = subprocess.run([real[1], str(path)], capture_output=True, env={},
                       preexec_fn=_dropToNobody if root else None)
    if root:
        os.setegid(65534)
        os.seteuid(65534)
    try:
        ours = runOursCheck(str(path), {})
    finally:
        if root:
            os.seteuid(0)
            os.setegid(0)
    assert ours == (p.returncode, p.stdout, p.stderr)
    assert ours[0] == 111 and ours[2].endswith(b": access denied\n")


def test_cdbModeIgnoresAPermissiveUmask(tmp_path):
    """
    Under umask 000 the real tcprules writes its cdb 0644 (it opens it so): ours too, so
    that no local user can rewrite the rules (and with them RELAYCLIENT or QMAILQUEUE).
    """
    real = realTools()
    old = os.umask(0)
    try:
        assert runReal([real[0], str(tmp_path / "real.cdb"), str(tmp_path / "real.tmp")],
                       b":allow\n")[0] == 0
        assert runOurs([str(tmp_path / "ours.cdb"), str(tmp_path / "ours.tmp")],
                       b":allow\n")[0] == 0
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o7777 for name in ("real.cdb", "ours.cdb")}
    assert modes == {"real.cdb": 0o644, "ours.cdb": 0o644}
