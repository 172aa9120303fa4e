"""
Writing whole buffers: L{writeAll} to a descriptor, and L{writeAtomically} for small files
(a temporary name, the whole content, fsync, rename: a reader sees the old file or the new
one, never half of either).  Pure file I/O; imports nothing of qmailtx.
"""

import os


def writeAll(fd, data):
    """Write every byte of C{data} to C{fd}, however many C{write} calls it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def writeAtomically(path, data, mode=0o600):
    """Replace C{path} by a file holding C{data} (mode C{mode}); raises C{OSError}."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        writeAll(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
