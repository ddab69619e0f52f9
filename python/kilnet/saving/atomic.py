"""Write a file so that a crash never leaves half of it: a temporary file in the same folder,
fsynced, then renamed over the target (os.replace is atomic on one filesystem).

The temporary file is named `.<target name>.kilnet-<16 hex>.tmp`. A save that is killed
(kill -9, power loss) leaves it behind; the next save into the same folder removes such files
that are older than STALE_SECONDS, are regular files owned by this user, and match that pattern
exactly (nothing else is ever touched). The saved file gets the permissions a plain open()
would give it (0666 less the umask), or, when it replaces a file, that file's permissions."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time

__all__ = ["atomic_path", "STALE_SECONDS", "TEMP_PATTERN"]

STALE_SECONDS = 3600
TEMP_PATTERN = re.compile(r"^\..+\.kilnet-[0-9a-f]{16}\.tmp$", re.DOTALL)


def _remove_stale_temps(folder, now=None):
    """Remove kilnet's own temporary files older than STALE_SECONDS from `folder`; never
    raises (a file another process removes first, or cannot be removed, is skipped)."""
    now = time.time() if now is None else now
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if not TEMP_PATTERN.match(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if (stat.S_ISREG(st.st_mode) and (uid is None or st.st_uid == uid)
                    and now - st.st_mtime > STALE_SECONDS):
                os.unlink(e.path)
        except OSError:
            continue


def _new_temp(folder, base):
    """Create the temporary file with mode 0666: the kernel applies the umask, as for open()."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.kilnet-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file in {folder}")


@contextlib.contextmanager
def atomic_path(path, overwrite=True, what="save"):
    """Yields a temporary path to write; on success it becomes `path`, on error it is removed."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{what}: {path} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(folder)
    tmp = _new_temp(folder, os.path.basename(path))
    try:
        try:   # the mode to keep: the replaced file's, else what open() gave the new file
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        with open(tmp, "rb+") as fh:   # the bytes are on disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
