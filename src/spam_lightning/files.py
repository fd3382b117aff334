"""Atomic file writes (a temporary file in the same folder, fsynced, then renamed into place), and the checks that
an input path is a file that can be read and that an output would replace no input.

Checked downloads: the first URL that works, sha256-verified, written atomically (pooch).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pooch

from spam_lightning.errors import DownloadError, UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class DiskFullError(UserError, OSError):
    """No space left where a file was being written (the file at the path, if any, is unchanged)."""


class OutputPathError(UserError, FileExistsError):
    """An output that would replace a file the project did not write: a user's file, or an input of the command."""


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file: refused rather than waiting for a writer"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
)


def require_file(path: str | Path, what: str, error: type[UserError], folder_hint: str = "give a file") -> Path:
    """`path` (~ expanded) if it is a regular file (or a symlink to one), else `error` saying what is there instead:
    nothing, a broken symlink, a folder (then `folder_hint`), a FIFO, a device. Only stat() looks at it: a FIFO is
    never opened, which would wait for a writer. `what` starts the message: "input_file", "checkpoint"."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            problem = f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        else:
            problem = "does not exist"
    except OSError as err:  # a symlink loop, no permission to look into a folder on the way
        problem = f"cannot be read ({err.strerror or err})"
    else:
        if stat.S_ISREG(mode):
            return path
        kinds = [kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)]
        problem = f"is a folder: {folder_hint}" if stat.S_ISDIR(mode) else f"is {kinds[0] if kinds else 'not a file'}"
    raise error(f"{what} {str(path)!r} {problem}")


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same path once symlinks are resolved, or, both existing, the same file
    through a hard link."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: not a file that can be written
        return False


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None if it is no regular file (a FIFO is never opened), or holds no JSON object."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def refuse_replacing(
    folder: Path, names: Collection[str], ours: Collection[str], inputs: Mapping[str, object], key: str, writer: str
) -> None:
    """Before files `names` are written into `folder` (the config key `key` names it): none may be an input (see
    refuse_replacing_inputs), and none that exists may be other than `ours` (those of an earlier output of `writer`)."""
    for name in names:
        refuse_replacing_inputs(folder / name, inputs, key)
    theirs = sorted(name for name in set(names) - set(ours) if os.path.lexists(folder / name))
    if theirs:
        them = "them" if len(theirs) > 1 else "it"
        raise OutputPathError(
            f"{key} {str(folder)!r} holds {', '.join(theirs)}, which {writer} did not write: refusing to replace "
            f"{them}; move {them}, or choose another {key}"
        )


def refuse_replacing_inputs(output: Path, inputs: Mapping[str, object], key: str) -> None:
    """Refuse an output (the config key `key` names it) that is one of the command's input files (by config key),
    also through a symlink or hard link, or that lies inside an input folder (an exported model): before anything
    is loaded or written."""
    for name, value in inputs.items():
        if value is None or str(value) in ("", "-"):  # "-": stdin
            continue
        source = Path(str(value)).expanduser()
        inside = source.is_dir() and output.expanduser().resolve().is_relative_to(source.resolve())
        if inside or same_file(output, source):
            where = "inside the folder" if inside else "the same file as"
            raise OutputPathError(
                f"{key} {str(output)!r} is {where} {name} {str(value)!r}: writing it would replace the input; "
                f"choose another {key}"
            )


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
        disk_full = _is_disk_full(err, path.parent)  # before the partial file is removed and frees its space
        Path(tmp).unlink(missing_ok=True)
        if disk_full:
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space_errors(err: BaseException) -> list[OSError]:
    """The OSErrors of a full disk (ENOSPC, EDQUOT; DiskFullErrors) in `err`'s chain, outermost first. torch.save
    reports a full disk as a RuntimeError ("unexpected pos ...") whose context holds the OSError."""
    found: list[OSError] = []
    seen: BaseException | None = err
    for _ in range(10):  # the chain is short; bounded in case of a cycle
        if seen is None:
            break
        if isinstance(seen, DiskFullError) or (isinstance(seen, OSError) and seen.errno in _NO_SPACE):
            found.append(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def disk_full_error(err: BaseException) -> DiskFullError | None:
    """The DiskFullError behind `err`, or None if `err` is not about a full disk. Ours (atomic_write's, naming the
    folder and the file left unchanged) comes first, also when another writer met the full disk while the run
    stopped for it (a logger's last save); else one naming the file of the other writer's OSError."""
    found = _no_space_errors(err)
    if not found:
        return None
    ours = next((e for e in found if isinstance(e, DiskFullError)), None)
    if ours is not None:
        return ours
    where = f" for {found[0].filename}" if found[0].filename else ""
    return DiskFullError(f"disk full: no space left{where} ({found[0].strerror or found[0]}). Free some space there")


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write into `folder` ran out of space; some writers lose the errno, so an almost full disk
    counts too."""
    if _no_space_errors(err):
        return True
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


log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloads shared by every command and run are kept (the GPT-2 vocabulary):
    $SPAM_LIGHTNING_CACHE, else the user's cache folder (~/.cache/spam_lightning on Linux)."""
    return Path(os.environ.get("SPAM_LIGHTNING_CACHE") or pooch.os_cache("spam_lightning")).expanduser()


def fetch(urls: Sequence[str], sha256: str, dest: Path, what: str, offline_hint: str) -> Path:
    """Download `dest` from the first of `urls` that works and has the expected sha256.

    pooch streams into a temporary file and moves it into place only after the hash matched, so a
    failed, truncated or tampered download leaves nothing behind that a later run would trust; a
    file already at `dest` with the right hash is used without any network access.
    """
    errors = []
    for url in urls:
        try:
            path = pooch.retrieve(
                url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent, progressbar=True
            )
            return Path(path)
        except Exception as err:  # any failure means: try the next URL
            cause = " ".join(str(err).split()) or type(err).__name__
            log.warning("download of %s failed: %s", url, cause)
            errors.append(f"{url}: {cause[:400]}")
    raise DownloadError(f"could not download {what} ({'; '.join(errors)}). To run offline, {offline_hint}")
