"""The frozen-feature cache on disk (`model.cache_dir`), shared by runs and sweep jobs with the same frozen trunk.

A trunk's rows live in `<cache_dir>/<key>/`, where the key is the sha256 of everything a row depends on besides
the text's token ids (which key the rows themselves): the frozen tensors' bytes, shapes and order (so the weights
and the frozen depth), whether rows keep their padding (pool=last), and the device type and autocast dtype that
computed them. A trunk folder holds segments, safetensors files named by their own sha256:

- written to a temporary file, fsync'd and renamed, so a reader sees a whole segment or none;
- read memory-mapped (the OS pages rows in and out) after their content is checked against the name: a corrupt
  segment is deleted with a warning and its rows are computed again;
- filled under a lock per trunk (`filelock`), so concurrent jobs compute each row once: the second job waits,
  then reads what the first wrote.

After each write the cache is pruned to `max_bytes`, dropping whole trunks least recently used first (never one
that a job holds the lock of). `python -m spam_lightning.trunk_store [--clean] [FOLDER]` lists the trunks with their
sizes and last use, or deletes them.

The cache deletes only what it can prove it wrote. A trunk is a folder with a key-shaped name (64 hex digits) holding
our trunk.json; in it only our own file names are deleted (segments, trunk.json, last_used, temporaries), and the
folder only if that leaves it empty. Anything else in the cache folder or a trunk's is left alone and named in a
warning; `check_cache_dir` refuses a cache folder that is the runs folder, the project folder, a parent of either,
the home folder or /. A segment's temporary file is written under the trunk's lock, so one found while the lock is
free was left by a killed job: it is deleted when a store opens or prunes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

from spam_lightning.errors import ConfigError
from spam_lightning.files import file_sha256
from spam_lightning.paths import project_dir
from spam_lightning.weights import tensors_sha256

log = logging.getLogger("spam_lightning")

FORMAT = "1"  # the segment layout below; part of every trunk key
SEGMENT_SUFFIX = ".safetensors"
USED_FILE = "last_used"  # touched on every open: the order in which prune() drops trunks
INFO_FILE = "trunk.json"  # what the key was computed from, for people listing the cache; also our marker
KEY_SHAPED = re.compile(r"[0-9a-f]{64}")  # a trunk's folder name, a segment's name (before SEGMENT_SUFFIX)
LOCK_SUFFIX = ".lock"  # <key>.lock beside the trunk's folder
SEGMENT_TEMPORARY = (".segment-", ".tmp")  # prefix and suffix of a segment being written
INFO_TEMPORARY = (f".{INFO_FILE}.", ".tmp")  # and of trunk.json being written
TRUNK_FIELDS = {"format", "keep_padding", "device_type", "autocast", "tensors"}  # trunk.json's (trunk_key's info)
NAMED_AT_MOST = 10  # foreign entries a warning names one by one


def tensors_digest(tensors: Sequence[torch.Tensor]) -> str:
    """The sha256 of a sequence of tensors (their order, dtypes, shapes and bytes)."""
    return tensors_sha256((str(i), tensor) for i, tensor in enumerate(tensors))


def trunk_key(
    tensors: Sequence[torch.Tensor], keep_padding: bool, device: torch.device, content: str | None = None
) -> tuple[str, dict]:
    """The sha256 naming a trunk's folder, and the description it was computed from. `content`: the tensors'
    `tensors_digest` when already computed."""
    autocast = torch.is_autocast_enabled(device.type)
    info = {
        "format": FORMAT,
        "keep_padding": keep_padding,
        "device_type": device.type,
        "autocast": str(torch.get_autocast_dtype(device.type)).removeprefix("torch.") if autocast else None,
        "tensors": [[*t.shape, str(t.dtype).removeprefix("torch.")] for t in tensors],
    }
    content = content or tensors_digest(tensors)
    return hashlib.sha256((json.dumps(info, sort_keys=True) + content).encode()).hexdigest(), info


class TrunkStore:
    """One trunk's segments under `root/key`: read them, write new rows, prune the cache folder."""

    def __init__(self, root: str | Path, key: str, info: Mapping, max_bytes: int | None) -> None:
        self.root = Path(root).expanduser()
        self.folder = self.root / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(_lock_file(self.folder))
        info_file = self.folder / INFO_FILE
        if not info_file.exists():
            with self.lock:  # a temporary file exists only under the lock (_remove_stale_temporaries)
                _atomic_text(info_file, json.dumps(info, indent=1))
        self.max_bytes = max_bytes
        self.read_segments: set[str] = set()
        self.foreign_named: set[Path] = set()  # the foreign entries a warning has named (once per run)
        _remove_stale_temporaries(list_trunks(self.root))

    def load_new(self) -> dict[bytes, torch.Tensor]:
        """Rows of the segments not read yet (memory-mapped), each segment checked against its sha256 name."""
        (self.folder / USED_FILE).touch()
        rows: dict[bytes, torch.Tensor] = {}
        for path in _segments(self.folder):
            if path.name in self.read_segments:
                continue
            if file_sha256(path) != path.stem:
                log.warning("frozen-feature cache: %s is corrupt (sha256 differs from its name); deleted", path)
                path.unlink(missing_ok=True)
                continue
            rows.update(_unpack(load_file(path)))
            self.read_segments.add(path.name)
        return rows

    def write(self, rows: Mapping[bytes, torch.Tensor]) -> dict[bytes, torch.Tensor]:
        """A new segment holding `rows` (same dtype and width); returns them read back memory-mapped."""
        keys = list(rows)
        tensors = [rows[key].to("cpu") for key in keys]
        blob = b"".join(keys)
        segment = {
            "keys": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
            "key_offsets": torch.tensor(np.cumsum([0, *map(len, keys)]), dtype=torch.int64),
            "row_offsets": torch.tensor(np.cumsum([0, *(len(t) for t in tensors)]), dtype=torch.int64),
            "rows": torch.cat(tensors),
        }
        with self.lock:  # held while the temporary file exists: one found with the lock free is stale
            fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=SEGMENT_TEMPORARY[0], suffix=SEGMENT_TEMPORARY[1])
            os.close(fd)
            try:
                save_file(segment, temporary, metadata={"format": FORMAT})
                with open(temporary, "rb") as f:
                    os.fsync(f.fileno())
                path = self.folder / f"{file_sha256(temporary)}{SEGMENT_SUFFIX}"
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        self.read_segments.add(path.name)
        self.prune()
        return _unpack(load_file(path))

    def prune(self) -> None:
        """Delete whole trunks, least recently used first, until the cache folder holds at most max_bytes; a
        trunk whose lock another job holds is skipped, and so is this store's own. Stale temporary files go too;
        foreign entries stay, named in a warning (once per run)."""
        if self.max_bytes is None:
            return
        trunks, foreign = scan_cache(self.root)
        _remove_stale_temporaries(trunks)
        if any(p not in self.foreign_named for p in foreign):
            log.warning("frozen-feature cache %s: left alone what it did not write: %s", self.root,
                        _names(foreign, self.root))  # fmt: skip
            self.foreign_named.update(foreign)
            self.foreign_named.update(p.parent for p in foreign)  # a folder whose files were named is no news
        trunks.sort(key=lambda t: t["last_used"])
        total = sum(t["bytes"] for t in trunks)
        for trunk in trunks:
            if total <= self.max_bytes:
                return
            if trunk["path"] == self.folder or not _remove_unless_in_use(trunk["path"]):
                continue
            total -= trunk["bytes"]
            log.info("frozen-feature cache: removed trunk %s (%.1f MiB, over the size limit)", trunk["path"].name,
                     trunk["bytes"] / 2**20)  # fmt: skip
        if total > self.max_bytes:
            log.warning(
                "frozen-feature cache %s holds %.1f MiB, over its limit of %.1f MiB (trunks in use are kept)",
                self.root, total / 2**20, self.max_bytes / 2**20,
            )  # fmt: skip


def _remove_unless_in_use(folder: Path) -> bool:
    """Delete a trunk's own files (trunk.json, its marker, last), its folder if that leaves it empty, and its lock
    file, unless a job holds the lock; whether it was deleted. Files the cache did not write stay."""
    lock = _lock_file(folder)
    try:
        with FileLock(lock, timeout=0):
            for path in sorted(_own_files(folder), key=lambda p: p.name == INFO_FILE):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: something foreign stays in it
                folder.rmdir()
    except Timeout:
        return False
    lock.unlink(missing_ok=True)
    return True


def _remove_stale_temporaries(trunks: Iterable[dict]) -> None:
    """Delete the temporary files that killed jobs left in these trunks: those of a trunk whose lock is free (a
    job writes a temporary file only while it holds its trunk's lock)."""
    for trunk in trunks:
        folder = trunk["path"]
        if not any(_is_temporary(p.name) for p in _own_files(folder)):
            continue
        try:
            with FileLock(_lock_file(folder), timeout=0):
                stale = [p for p in _own_files(folder) if _is_temporary(p.name)]
                for path in stale:
                    path.unlink(missing_ok=True)
        except Timeout:
            continue  # a job is writing into this trunk: its temporary file is live
        log.info("frozen-feature cache: removed %d temporary file(s) left by an interrupted job in %s", len(stale),
                 folder)  # fmt: skip


def _lock_file(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}{LOCK_SUFFIX}")


def _trunk_info(folder: Path) -> dict | None:
    """The description in a trunk's trunk.json, or None when `folder` is not a trunk this module wrote: it needs a
    key-shaped name and our trunk.json (a real folder and file, not links: deleting in them would delete elsewhere)."""
    info_file = folder / INFO_FILE
    if not KEY_SHAPED.fullmatch(folder.name) or folder.is_symlink() or info_file.is_symlink():
        return None
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):  # no trunk.json, not a folder, not JSON
        return None
    return info if isinstance(info, dict) and info.keys() >= TRUNK_FIELDS else None


def _is_temporary(name: str) -> bool:
    return any(name.startswith(start) and name.endswith(end) for start, end in (SEGMENT_TEMPORARY, INFO_TEMPORARY))


def _is_own_name(name: str) -> bool:
    """A file name this module writes in a trunk's folder."""
    segment = name.endswith(SEGMENT_SUFFIX) and KEY_SHAPED.fullmatch(name.removesuffix(SEGMENT_SUFFIX))
    return bool(segment) or name in (INFO_FILE, USED_FILE) or _is_temporary(name)


def _own_files(folder: Path) -> list[Path]:
    """The files in a trunk's folder that this module wrote (by name; plain files, not links)."""
    try:
        return [p for p in folder.iterdir() if _is_own_name(p.name) and p.is_file() and not p.is_symlink()]
    except FileNotFoundError:  # removed meanwhile by another job's prune
        return []


def _segments(folder: Path) -> list[Path]:
    return sorted(p for p in _own_files(folder) if p.name.endswith(SEGMENT_SUFFIX))


def _names(paths: Sequence[Path], root: Path) -> str:
    """Paths relative to root, the first NAMED_AT_MOST of them."""
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:NAMED_AT_MOST])
    return shown + (f" and {len(paths) - NAMED_AT_MOST} more" if len(paths) > NAMED_AT_MOST else "")


def _unpack(segment: Mapping[str, torch.Tensor]) -> dict[bytes, torch.Tensor]:
    blob = segment["keys"].numpy().tobytes()
    key_offsets, row_offsets = segment["key_offsets"].tolist(), segment["row_offsets"].tolist()
    rows = segment["rows"]
    return {
        blob[key_offsets[i] : key_offsets[i + 1]]: rows[row_offsets[i] : row_offsets[i + 1]]
        for i in range(len(key_offsets) - 1)
    }


def _atomic_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def scan_cache(root: str | Path) -> tuple[list[dict], list[Path]]:
    """The trunks under root (path, bytes of our files, segments, last use in epoch seconds, their description),
    and the foreign entries: everything else there or inside a trunk's folder, which the cache never deletes."""
    root = Path(root).expanduser()
    trunks: list[dict] = []
    foreign: list[Path] = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        info = _trunk_info(entry)
        if info is None:
            lock_of_a_trunk = entry.name.endswith(LOCK_SUFFIX) and KEY_SHAPED.fullmatch(entry.stem)
            if not lock_of_a_trunk:
                foreign.append(entry)
            continue
        own = _own_files(entry)
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another job's prune
            foreign += sorted(p for p in entry.iterdir() if p not in own)
            used = entry / USED_FILE
            trunks.append({
                "path": entry,
                "bytes": sum(_size(p) for p in own),
                "segments": sum(p.name.endswith(SEGMENT_SUFFIX) for p in own),
                "last_used": (used if used in own else entry).stat().st_mtime,
                "info": info,
            })  # fmt: skip
    return trunks, foreign


def list_trunks(root: str | Path) -> list[dict]:
    """The trunks under root (`scan_cache`): folders this module wrote, nothing else."""
    return scan_cache(root)[0]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed meanwhile by another job's prune
        return 0


def clean(root: str | Path, trunks: Iterable[dict] | None = None) -> int:
    """Delete the trunks (all under root by default), skipping any a running job holds; returns bytes freed."""
    freed = 0
    for trunk in list_trunks(root) if trunks is None else trunks:
        if not _remove_unless_in_use(trunk["path"]):
            print(f"kept {trunk['path']}: a running job uses it")
            continue
        freed += trunk["bytes"]
    return freed


def check_cache_dir(cache_dir: str | os.PathLike[str], runs_dir: str | os.PathLike[str] | None = None) -> None:
    """Refuse (ConfigError) a model.cache_dir that is, or holds, the runs folder, the project folder or the home
    folder: the cache needs a folder of its own (it deletes only its trunks, but a folder that holds runs or a
    project is no place to keep gigabytes of them)."""
    folder = Path(os.path.expanduser(cache_dir)).resolve()
    protected = {"the runs folder (runs_dir)": runs_dir, "the project folder": project_dir(), "the home folder": "~"}
    for what, place in protected.items():
        if place is None:
            continue
        path = Path(os.path.expanduser(place)).resolve()  # os.path's: "~" stays "~" where there is no home
        if folder == path or folder in path.parents:
            raise ConfigError(
                f"model.cache_dir={cache_dir} {'is' if folder == path else 'holds'} {what} {path}: expected a folder "
                f"of the cache's own, e.g. model.cache_dir={project_dir() / 'cache' / 'frozen_features'}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m spam_lightning.trunk_store", description="List or delete the frozen-feature cache on disk."
    )
    parser.add_argument("folder", help="the cache folder (model.cache_dir)")
    parser.add_argument("--clean", action="store_true", help="delete every trunk not in use")
    args = parser.parse_args(argv)
    trunks, foreign = scan_cache(args.folder)
    for t in trunks:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["last_used"]))
        what = t["info"]
        print(
            f"{t['path'].name[:16]}  {t['bytes'] / 2**20:9.1f} MiB  {t['segments']} segments  last used {when}  "
            f"{len(what.get('tensors', []))} frozen tensors, {what.get('device_type')}, autocast {what.get('autocast')}"
        )
    print(f"{len(trunks)} trunks, {sum(t['bytes'] for t in trunks) / 2**20:.1f} MiB in {args.folder}")
    if foreign:
        print(f"not the cache's, left alone: {_names(foreign, Path(args.folder).expanduser())}")
    if args.clean:
        print(f"freed {clean(args.folder, trunks) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
