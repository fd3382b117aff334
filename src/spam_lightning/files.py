"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed into place."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from spam_lightning.errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class DiskFullError(UserError, OSError):
    """No space left where a file was being written (the file at the path, if any, is unchanged)."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file next to `path`, then rename it to `path`.

    A process killed at any moment leaves either the old complete file or the new complete one, never
    a truncated file that a later run would trust. A full disk is a DiskFullError naming the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(
                f"disk full: no space left in {path.parent} for {path.name} ({free / 2**20:.1f} MiB free after "
                f"removing the partial file); {path.name} was not changed. Free some space there"
            ) from err
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. torch.save reports it as a RuntimeError ("unexpected pos ...") whose
    context holds the OSError; some writers lose the errno, so an almost full disk counts too."""
    seen: BaseException | None = err
    for _ in range(10):  # the chain is short; bounded in case of a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return isinstance(err, Exception) and shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_if_changed(path: str | Path, data: bytes) -> bool:
    """Write `data` to `path` (atomically) unless the file already holds exactly these bytes; True when written.

    A file that is already current is only read: no temporary file, no rename, so a read-only folder whose
    files are current is fine, and the file's mtime tells when its content last changed.
    """
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:  # missing or unreadable: (re)write it
        pass
    atomic_write_bytes(path, data)
    return True
