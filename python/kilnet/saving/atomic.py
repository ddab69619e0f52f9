"""Write a file so that a crash never leaves half of it: a temporary file in the same folder,
fsynced, then renamed over the target (os.replace is atomic on one filesystem)."""
from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path, overwrite=True, what="save"):
    """Yields a temporary path to write; on success it becomes `path`, on error it is removed."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{what}: {path} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:   # the bytes are on disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
