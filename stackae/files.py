"""Files: atomic replacement with the umask's mode, never clobbering a user's file, Keras files."""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from stackae.errors import CheckpointError, Param, RunError, first_line


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, suffix=""):
    """Call write(tmp_path), fsync it, then rename it over `path`.

    A crash (or a full disk) at any moment leaves either the old file or the
    new one, never half of one. The file gets the mode an ordinary new file
    would (0666 less the umask). `suffix` keeps extensions Keras insists on.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise RunError(f"{path}: the folder {path.parent} does not exist")
    # A short name: the file's own name plus a prefix could pass the 255-byte limit.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stackae-", suffix=f".tmp{suffix}", dir=path.parent)
    except PermissionError:
        raise RunError(f"{path}: cannot write in {path.parent} (permission denied)") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def link_problem(path):
    """What is wrong with `path` when it is a link that leads nowhere, else None."""
    path = os.fspath(path)
    if not os.path.islink(path) or os.path.exists(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a loop of symbolic links"
    return "is a link to nothing (a broken link)"


def check_space(folder, needed, what):
    """RunError (one line) unless `folder`'s file system has `needed` bytes free.

    HDF5 (Keras's weights files) cannot be stopped cleanly by a full disk: h5py
    objects left behind fail again when collected, and the process can crash.
    So a checkpoint is written only when there is room for it.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise RunError(
            f"{folder}: no room for {what} (about {needed / 2**20:.1f} MB needed, "
            f"{free / 2**20:.1f} MB free); the last good checkpoint is kept"
        )


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(path, overwrite, owned=False):
    """RunError unless `path` may be written: new, or --overwrite, or a file we wrote."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise RunError(f"{path}: exists and is not a regular file; refusing to replace it")
    if path.exists() and not (overwrite or owned):
        raise RunError(f"{path}: exists; use", Param("overwrite"), "to replace it")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path):
    """keras.saving.load_model in safe mode, with a one-line RunError on a bad file."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        raise RunError(f"{path}: not a readable Keras model ({first_line(err)})") from None


def load_weights(model, path):
    """model.load_weights(path), with a one-line CheckpointError on a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        model.load_weights(path)
    except Exception as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({first_line(err)})") from None
