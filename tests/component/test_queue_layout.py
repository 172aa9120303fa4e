"""qmailtx.queuelayout.createLayout: qmail's queue directories, lock files and modes."""

import os
import stat

from qmailtx.queuelayout import SPLIT, createLayout


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_layoutModes(tmp_path):
    """Every directory and lock file of qmail's hier.c exists with qmail's mode."""
    q = str(tmp_path / "queue")
    old = os.umask(0o077)
    try:
        createLayout(q)
    finally:
        os.umask(old)
    assert _mode(q) == 0o750
    for name, mode in [("pid", 0o700), ("intd", 0o700), ("todo", 0o750),
                       ("bounce", 0o700), ("lock", 0o750)]:
        assert _mode(os.path.join(q, name)) == mode, name
    for name, mode in [("mess", 0o750), ("info", 0o700), ("local", 0o700), ("remote", 0o700)]:
        assert _mode(os.path.join(q, name)) == mode
        subdirs = sorted(os.listdir(os.path.join(q, name)), key=int)
        assert subdirs == [str(i) for i in range(SPLIT)]
        for sub in subdirs:
            assert _mode(os.path.join(q, name, sub)) == mode
    trigger = os.path.join(q, "lock", "trigger")
    assert stat.S_ISFIFO(os.lstat(trigger).st_mode)
    assert _mode(trigger) == 0o622
    with open(os.path.join(q, "lock", "tcpto"), "rb") as f:
        assert f.read() == b"\0" * 1024
    assert _mode(os.path.join(q, "lock", "tcpto")) == 0o644
    assert os.path.getsize(os.path.join(q, "lock", "sendmutex")) == 0
    assert _mode(os.path.join(q, "lock", "sendmutex")) == 0o600


def test_layoutIdempotent(tmp_path):
    """A second run keeps existing content (tcpto table, queued files) and repairs modes."""
    q = str(tmp_path / "queue")
    createLayout(q)
    tcpto = os.path.join(q, "lock", "tcpto")
    with open(tcpto, "r+b") as f:
        f.write(b"\x01" * 16)
    kept = os.path.join(q, "mess", "5", "5")
    open(kept, "wb").close()
    os.chmod(os.path.join(q, "todo"), 0o777)
    createLayout(q)
    with open(tcpto, "rb") as f:
        assert f.read(16) == b"\x01" * 16
    assert os.path.exists(kept)
    assert _mode(os.path.join(q, "todo")) == 0o750


def test_layoutOwner(tmp_path):
    """With uid/gid given, every created path is owned by them (another uid when root)."""
    q = str(tmp_path / "queue")
    uid, gid = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    createLayout(q, uid=uid, gid=gid)
    for dirpath, dirnames, filenames in os.walk(q):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            st = os.lstat(name)
            assert (st.st_uid, st.st_gid) == (uid, gid)


def test_init_gives_alias_to_a_mail_user(tmp_path):
    """Made by root, alias/ belongs to the alias user or nobody, so postmaster mail can be
    delivered (deliveries never run as uid 0); made by anyone else, to that user."""
    import pwd

    from qmailtx.rootdir import aliasOwner, createRoot

    root = tmp_path / "root"
    createRoot(str(root), "mx.example.com")
    st = os.stat(root / "alias" / "Maildir" / "new")
    if os.geteuid() == 0 and aliasOwner() is not None:
        assert (st.st_uid, st.st_gid) == aliasOwner()
        assert st.st_uid != 0
        assert pwd.getpwuid(st.st_uid).pw_name in ("alias", "nobody")
    else:
        assert st.st_uid == os.geteuid()


def test_blockedAncestor(tmp_path):
    """A directory without search permission for the user is found; a clear path is None."""
    from qmailtx.rootdir import blockedAncestor

    outer = tmp_path / "outer"
    inner = outer / "inner" / "alias"
    inner.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    os.chmod(outer, 0o700)
    os.chmod(outer / "inner", 0o755)
    st = os.stat(outer)
    assert blockedAncestor(str(inner), st.st_uid + 1, st.st_gid + 1) == str(outer)
    os.chmod(outer, 0o711)
    assert blockedAncestor(str(inner), st.st_uid + 1, st.st_gid + 1) != str(outer)
