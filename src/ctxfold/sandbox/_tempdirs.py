"""One temporary folder per host process, so that a host killed with ``kill -9`` leaves nothing.

Every folder ctxfold makes under the system's temporary directory (sandbox scratch, inputs, the
compiled worker) goes inside ``ctxfold-host-XXXX``, made at first use and held with an advisory
lock (``flock``) for the life of the process. The kernel drops the lock when the process dies,
however it dies, so the next ctxfold process to start finds the folders whose lock is free and
removes them. A folder a process made but has not locked yet is spared for a few seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["host_temp_dir", "remove_stale_host_dirs"]

PREFIX = "ctxfold-host-"
_GRACE_S = 10.0  # a folder younger than this may not be locked by its maker yet
_LOCK = threading.Lock()
_MINE: list[tuple[str, int]] = []  # (folder, the fd that holds its lock)


def host_temp_dir() -> str:
    """This process's folder for temporary files (made, locked and stale ones swept at first
    use; removed at exit). Mode 0711: a sandbox worker that left root can reach its own scratch
    folder inside but cannot list the others."""
    with _LOCK:
        if _MINE and Path(_MINE[0][0]).is_dir():
            return _MINE[0][0]
        remove_stale_host_dirs()
        folder = tempfile.mkdtemp(prefix=PREFIX)
        Path(folder).chmod(0o711)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _MINE[:] = [(folder, fd)]
        return folder


def remove_stale_host_dirs(root: str | None = None) -> list[str]:
    """Remove the folders of ctxfold processes that are gone (their lock is free); returns them."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            if entry.name.startswith(PREFIX) and _stale(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def _stale(path: str) -> bool:
    try:
        if time.time() - Path(path).lstat().st_mtime < _GRACE_S:
            return False
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its process is alive
    finally:
        os.close(fd)
    return True


def _forget() -> None:
    """In a forked child: the parent's folder and lock are the parent's; make a new one."""
    _MINE.clear()


@atexit.register
def _remove_mine() -> None:
    for folder, fd in _MINE:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(fd)
    _MINE.clear()


os.register_at_fork(after_in_child=_forget)
