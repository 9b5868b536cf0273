"""Advisory locks on run directories: one writing process per run, refused at once otherwise."""

import errno
import fcntl
import os
import socket
from pathlib import Path

from stackae.errors import RunError
from stackae.files import umask

LOCK = ".stackae.lock"
_HELD = {}  # resolved run path -> file descriptor of its lock, for the locks this process holds


def acquire(folder):
    """Hold `folder`'s lock until `release` or the process ends (re-entrant in one process).

    A second process is refused at once with a RunError naming the holder.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        return
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~umask())
    except PermissionError:
        raise RunError(
            f"{folder}: cannot take the run's lock (permission denied: the folder is read-only)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise RunError(f"{folder}: in use by {holder}; wait for it to finish") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
    _HELD[key] = fd


def holds(folder):
    return str(Path(folder).resolve()) in _HELD


def release(folder):
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


def release_all():
    """Let go of every run lock this process holds."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
