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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

from spam_lightning.files import file_sha256
from spam_lightning.weights import tensors_sha256

log = logging.getLogger("spam_lightning")

FORMAT = "1"  # the segment layout below; part of every trunk key
SEGMENT_SUFFIX = ".safetensors"
USED_FILE = "last_used"  # touched on every open: the order in which prune() drops trunks
INFO_FILE = "trunk.json"  # what the key was computed from, for people listing the cache


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
        info_file = self.folder / INFO_FILE
        if not info_file.exists():
            _atomic_text(info_file, json.dumps(info, indent=1))
        self.max_bytes = max_bytes
        self.lock = FileLock(self.root / f"{key}.lock")
        self.read_segments: set[str] = set()

    def load_new(self) -> dict[bytes, torch.Tensor]:
        """Rows of the segments not read yet (memory-mapped), each segment checked against its sha256 name."""
        (self.folder / USED_FILE).touch()
        rows: dict[bytes, torch.Tensor] = {}
        for path in sorted(self.folder.glob(f"*{SEGMENT_SUFFIX}")):
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
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".segment-", suffix=".tmp")
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
        trunk whose lock another job holds is skipped, and so is this store's own."""
        if self.max_bytes is None:
            return
        trunks = sorted(list_trunks(self.root), key=lambda t: t["last_used"])
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
    """Delete a trunk's folder and its lock file, unless a job holds the lock; whether it was deleted."""
    lock = folder.with_name(f"{folder.name}.lock")
    try:
        with FileLock(lock, timeout=0):
            shutil.rmtree(folder, ignore_errors=True)
    except Timeout:
        return False
    lock.unlink(missing_ok=True)
    return True


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


def list_trunks(root: str | Path) -> list[dict]:
    """Each trunk folder under root: path, bytes on disk, segments, last use (epoch seconds), its description."""
    trunks = []
    for folder in sorted(p for p in Path(root).expanduser().glob("*") if p.is_dir()):
        segments = list(folder.glob(f"*{SEGMENT_SUFFIX}"))
        used = folder / USED_FILE
        info_file = folder / INFO_FILE
        trunks.append({
            "path": folder,
            "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "segments": len(segments),
            "last_used": used.stat().st_mtime if used.exists() else folder.stat().st_mtime,
            "info": json.loads(info_file.read_text()) if info_file.exists() else {},
        })  # fmt: skip
    return trunks


def clean(root: str | Path, trunks: Iterable[dict] | None = None) -> int:
    """Delete the trunks (all under root by default), skipping any a running job holds; returns bytes freed."""
    freed = 0
    for trunk in list_trunks(root) if trunks is None else trunks:
        if not _remove_unless_in_use(trunk["path"]):
            print(f"kept {trunk['path']}: a running job uses it")
            continue
        freed += trunk["bytes"]
    return freed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m spam_lightning.trunk_store", description="List or delete the frozen-feature cache on disk."
    )
    parser.add_argument("folder", help="the cache folder (model.cache_dir)")
    parser.add_argument("--clean", action="store_true", help="delete every trunk not in use")
    args = parser.parse_args(argv)
    trunks = list_trunks(args.folder)
    for t in trunks:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["last_used"]))
        what = t["info"]
        print(
            f"{t['path'].name[:16]}  {t['bytes'] / 2**20:9.1f} MiB  {t['segments']} segments  last used {when}  "
            f"{len(what.get('tensors', []))} frozen tensors, {what.get('device_type')}, autocast {what.get('autocast')}"
        )
    print(f"{len(trunks)} trunks, {sum(t['bytes'] for t in trunks) / 2**20:.1f} MiB in {args.folder}")
    if args.clean:
        print(f"freed {clean(args.folder, trunks) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
