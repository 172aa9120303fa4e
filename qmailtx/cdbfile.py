"""
The one importer of the cdb library (pure-cdb's C{cdblib}).

Reading a cdb and building one atomically (write a temporary file, fsync, rename over the
target, as qmail-newmrh and tcprules do).  No policy lives here.  Writes only the files
it is asked to build.
"""

import os

import cdblib


class CdbFile:
    """
    A read-only cdb opened from a path and held in memory.

    cdb files here are small (rules, morercpthosts, users/cdb), so reading one whole is
    cheaper than keeping a descriptor per reader.
    """

    def __init__(self, data):
        self._reader = cdblib.Reader(data)

    @classmethod
    def fromPath(cls, path):
        with open(path, "rb") as f:
            return cls(f.read())

    def get(self, key, default=None):
        """The first value stored under C{key} (bytes), or C{default}."""
        return self._reader.get(key, default)

    def getAll(self, key):
        """Every value stored under C{key}, in the order written."""
        return list(self._reader.gets(key))

    def __contains__(self, key):
        return self._reader.get(key) is not None

    def items(self):
        return list(self._reader.iteritems())


def buildCdb(path, tmpPath, pairs):
    """
    Write C{pairs} (an iterable of C{(key, value)} bytes) to C{tmpPath}, fsync it, and
    rename it over C{path}.  Raises C{OSError}; on failure the old C{path} is untouched and
    the temporary file is removed.  A new file is made 0644 as tcprules and qmail-newmrh
    make theirs, whatever a permissive umask would allow: rules, morercpthosts and users
    cdbs decide relaying and delivery.
    """
    try:
        fd = os.open(tmpPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            writer = cdblib.Writer(f)
            for key, value in pairs:
                writer.put(key, value)
            writer.finalize()
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmpPath, path)
    except BaseException:
        try:
            os.unlink(tmpPath)
        except OSError:
            pass
        raise
