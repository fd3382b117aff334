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
that a job holds the lock of). `python -m spam_lightning.training.feature_cache [--clean] [FOLDER]`
lists the trunks with their sizes and last use, or deletes them.

The cache deletes only what it can prove it wrote. A trunk is a folder with a key-shaped name (64 hex digits) holding
our trunk.json; in it only our own file names are deleted (segments, trunk.json, last_used, temporaries), and the
folder only if that leaves it empty. Anything else in the cache folder or a trunk's is left alone and named in a
warning; `check_cache_dir` refuses a cache folder that is the runs folder, the project folder, a parent of either,
the home folder or /. A segment's temporary file is written under the trunk's lock, so one found while the lock is
free was left by a killed job: it is deleted when a store opens or prunes.

Frozen-trunk feature cache: the frozen blocks' output for each text, computed once and reused.

With the book's recipe only the top block(s), the final LayerNorm and the head train. The embeddings
and the blocks below never change and always run in eval mode (no dropout), so their output for a
text is a fixed function of its token ids. The cache keeps that output per text, keyed by the ids:

- pools last_token / first / mean: with causal attention the states of the real tokens do not
  depend on what follows them, so only those (T_i, D) states are kept and re-padded with zeros
  (which nothing reads) to each batch's width;
- pool last: the pooled position is a padding token, so the padded row (T, D) is key and value.

Keying by the ids makes the cache exact by construction: it needs no example indices, serves the
training, validation and test splits alike, and two identical texts share one entry. It empties itself
when a frozen parameter changes, and is never saved in checkpoints. Rows live in RAM, on the device that
computed them (a GPU's memory when training on one: no copies and no CPU work per step); or, with a
`directory` (`model.cache_dir`), on disk, read memory-mapped: shared by every run and sweep job with the same
frozen trunk, and bounded by the disk rather than RAM (`spam_lightning.training.feature_cache`).

`FrozenFeatureCache` is a Lightning callback. `SpamClassifier.configure_callbacks` adds it when the cache is
exact and wanted. Before each epoch it fills itself from the data module's `token_ids(split, epoch)` in
length-sorted batches (little padding); before each step it puts the batch's frozen features into the
batch under `FROZEN_FEATURES`, where the step takes them instead of running the frozen blocks.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm import tqdm

from spam_lightning.data.preprocess import pad
from spam_lightning.errors import ConfigError
from spam_lightning.files import file_sha256
from spam_lightning.model.weights import tensors_sha256
from spam_lightning.paths import project_dir

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
    """The sha256 of a sequence of tensors (their order, dtypes, shapes and bytes): of each one's sha256, hashed on
    torch's threads at once (hashlib lets go of the GIL): 1.6-1.9x faster on our 2 cores than one sha256 of them all."""
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        each = pool.map(lambda tensor: tensors_sha256([("", tensor)]), tensors)
        return hashlib.sha256("".join(f"{i}:{digest};" for i, digest in enumerate(each)).encode()).hexdigest()


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
        prog="python -m spam_lightning.training.feature_cache",
        description="List or delete the frozen-feature cache on disk.",
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


info = rank_zero_only(log.info)

Compute = Callable[[torch.Tensor], torch.Tensor]  # (B, T) ids -> (B, T, D) frozen hidden states
FROZEN_FEATURES = "frozen_features"  # the batch key of the precomputed frozen part
TOKEN_IDS = "token_ids"  # the batch key of the unpadded token ids (CPU lists), when the data module adds them
PROGRESS_LOG_SECONDS = 60  # a fill longer than this logs its progress (the bar is not in logs)
PENDING_BYTES = 64 << 20  # with a directory: new rows go to disk in segments of about this size (held twice while
# written: the rows and their concatenation)


class FrozenFeatureCache(Callback):
    """Frozen hidden states per text. `keep_padding`: key and store the whole padded row (pool=last).
    `directory`: rows also go to disk there, shared with other runs (`spam_lightning.training.feature_cache`), at most
    `max_bytes` in all."""

    def __init__(self, keep_padding: bool, directory: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.keep_padding = keep_padding
        self.directory = directory
        self.max_bytes = max_bytes
        self.rows: dict[bytes, torch.Tensor] = {}
        self.pending: dict[bytes, torch.Tensor] = {}  # directory: rows not on disk yet (CPU memory)
        self.pending_bytes = 0
        self._store: TrunkStore | None = None  # directory: this trunk's folder, once the frozen tensors are known
        self._frozen: list[torch.Tensor] = []
        self._marks: tuple[tuple[int, int], ...] | None = None  # (data_ptr, version) of the frozen tensors
        self._digest: str | tuple[int, ...] | None = None  # their content fingerprint (_fingerprint)

    # Copies and pickles (DDP spawn, deepcopy) start empty: the rows are recomputable.
    def __getstate__(self) -> dict[str, Any]:
        return {"keep_padding": self.keep_padding, "directory": self.directory, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(row.numel() * row.element_size() for row in self.rows.values())

    def clear(self) -> None:
        self.rows, self.pending, self.pending_bytes, self._store = {}, {}, 0, None

    def check(self, frozen: Iterable[torch.Tensor]) -> None:
        """Empty the cache if the frozen tensors' content changed since it was filled."""
        tensors = list(frozen)
        marks = tuple((t.data_ptr(), t._version) for t in tensors)
        if marks == self._marks:
            return
        digest = _fingerprint(tensors)  # only when something may have changed (a load, a move to a device)
        if digest != self._digest:
            if self.rows:
                info("frozen weights changed: the frozen-feature cache starts over")
            self.clear()
            self._digest = digest
        self._frozen = tensors
        self._marks = marks

    def open_store(self, device: torch.device) -> TrunkStore | None:
        """With a directory: this trunk's folder on disk (its key hashes the frozen tensors, once per content), and
        the rows already there. Call it where the rows are computed (device, autocast): both are in the key."""
        if self.directory is None or not self._frozen:
            return None
        if self._store is None:
            content = self._digest if isinstance(self._digest, str) else None  # the sha256 check() computed
            key, description = trunk_key(self._frozen, self.keep_padding, device, content)
            self._store = TrunkStore(self.directory, key, description, self.max_bytes)
            self.load_stored()
        return self._store

    def load_stored(self) -> None:
        if self._store is not None:
            found = self._store.load_new()
            self.rows.update(found)
            if found:
                info("frozen-feature cache: %d texts read from %s", len(found), self._store.folder)

    def flush(self) -> None:
        """Write the pending rows to disk as one segment; the cache then reads them memory-mapped."""
        if self.pending and self._store is not None:
            self.rows.update(self._store.write(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def _key(self, ids: Sequence[int], width: int) -> bytes:
        """A text's key: its token ids; with keep_padding also the padded width (the row is the padded one)."""
        key = np.asarray(ids, dtype=np.int64).tobytes()
        return key + width.to_bytes(4, "little") if self.keep_padding else key

    def fill(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | None,
        compute: Compute,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> tuple[list[bytes], int]:
        """Compute and store the rows that are missing; returns every row's key and how many were new.

        `token_ids`: the rows' unpadded ids on the CPU, when the caller has them (the data module's batches
        carry them): the keys then need no copy of `input_ids` from the device, which would wait for the GPU.
        """
        width = input_ids.shape[1]
        if token_ids is None:
            ids = input_ids.detach().to("cpu", torch.int64).numpy()
            counts = lengths.tolist() if lengths is not None else [width] * len(ids)
            token_ids = [row[:n] for row, n in zip(ids, counts, strict=True)]
        widths = [width] * len(token_ids) if self.keep_padding else [len(ids) for ids in token_ids]
        keys = [self._key(ids, width) for ids in token_ids]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # a key's first row
        missing = sorted(i for key, i in first.items() if key not in self.rows)
        if missing:
            needed = max(widths[i] for i in missing)
            with torch.no_grad():
                hidden = compute(input_ids[missing, :needed]).detach()
            if self.directory is not None:
                hidden = hidden.cpu()
            for row, i in enumerate(missing):
                self.rows[keys[i]] = hidden[row, : widths[i]].clone()
                if self.directory is not None:
                    self.pending[keys[i]] = self.rows[keys[i]]
                    self.pending_bytes += self.rows[keys[i]].numel() * self.rows[keys[i]].element_size()
            if self.pending_bytes >= PENDING_BYTES:
                self.flush()
        return keys, len(missing)

    def features(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | None,
        compute: Compute,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) frozen hidden states on the ids' device, from the cache where possible."""
        keys, _ = self.fill(input_ids, lengths, compute, token_ids)
        device = input_ids.device
        hidden = pad_sequence([self.rows[key].to(device, non_blocking=True) for key in keys], batch_first=True)
        width = input_ids.shape[1]
        if hidden.shape[1] < width:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, width - hidden.shape[1]))
        return hidden

    # -- the callback: fill before each epoch, hand each step its batch's features --------------------

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill_split(trainer, pl_module, "train", trainer.num_training_batches, trainer.train_dataloader)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill_split(trainer, pl_module, "validation", sum(trainer.num_val_batches), trainer.val_dataloaders)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill_split(trainer, pl_module, "test", sum(trainer.num_test_batches), trainer.test_dataloaders)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self._attach(trainer, pl_module, batch)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._attach(trainer, pl_module, batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self._attach(trainer, pl_module, batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush()  # rows the steps computed (texts the epoch's fill did not see)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush()

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush()

    def _attach(self, trainer: L.Trainer, pl_module: Any, batch: dict[str, torch.Tensor]) -> None:
        with trainer.precision_plugin.forward_context():
            self.open_store(pl_module.device)  # once (epochs limited to some batches fill no split ahead)
            batch[FROZEN_FEATURES] = self.features(
                batch["input_ids"], batch["lengths"], pl_module.frozen_features, batch.get(TOKEN_IDS)
            )

    def _fill_split(
        self, trainer: L.Trainer, pl_module: Any, split: str, batches_run: int | float, loaders: Any
    ) -> None:
        """Fill the cache with this process's texts of `split` for the epoch, in length-sorted batches of at
        most max_tokens tokens (little padding), before the steps need them. Texts it misses (another data
        set) are filled by the steps. An epoch limited to fewer batches than its loader has (limit_*_batches,
        fast_dev_run) fills only what it reads; pool=last with per-batch padding cannot be filled ahead
        (its keys depend on each batch's width).

        First the frozen tensors are checked: once an epoch of each stage, since loads and moves happen between
        them, not between batches (listing them is Python work per tensor, 178 at 124M and 754 at XL, which every
        batch would repeat)."""
        self.check(pl_module.frozen_parameters())
        datamodule = trainer.datamodule
        preprocessing = getattr(datamodule, "preprocessing", None)
        loaders = [loaders] if isinstance(loaders, DataLoader) else list(loaders or [])
        if preprocessing is None or not loaders or batches_run < sum(len(loader) for loader in loaders):
            return
        if self.keep_padding and preprocessing.pad_length is None:
            return
        rows = sorted(datamodule.token_ids(split, trainer.current_epoch), key=len)  # stable: ties keep data order
        max_tokens = 512 if pl_module.device.type == "cpu" else 16384  # small batches run fastest on CPUs
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        new = start = 0
        with trainer.precision_plugin.forward_context():
            store = self.open_store(pl_module.device)
        # With a directory, one job at a time fills a trunk: a concurrent job with the same trunk waits here, then
        # reads the rows the first one wrote instead of computing them again.
        with (
            store.lock if store is not None else contextlib.nullcontext(),
            trainer.precision_plugin.forward_context(),
        ):
            self.load_stored()
            if all(self._key(ids, preprocessing.pad_length or 0) in self.rows for ids in rows):
                return  # nothing to compute: no bar (later epochs, the test pass over cached splits)
            bar = tqdm(total=len(rows), desc=f"frozen-feature cache ({split})", unit="text", disable=not show)
            began = last_log = time.monotonic()
            done_tokens, total_tokens = 0, sum(map(len, rows))
            while start < len(rows):
                stop = start + 1
                while stop < len(rows) and (stop + 1 - start) * len(rows[stop]) <= max_tokens:
                    stop += 1
                chunk = rows[start:stop]
                input_ids, lengths = (t.to(pl_module.device) for t in pad(chunk, preprocessing.pad_length))
                new += self.fill(input_ids, lengths, pl_module.frozen_features, chunk)[1]
                bar.update(stop - start)
                start = stop
                done_tokens += sum(map(len, chunk))
                if time.monotonic() - last_log > PROGRESS_LOG_SECONDS:  # train.log and job outputs see long fills too
                    last_log = time.monotonic()
                    minutes = (total_tokens - done_tokens) / (done_tokens / (last_log - began)) / 60  # longest last
                    info("frozen-feature cache (%s): %d of %d texts, about %.0f min left",
                         split, start, len(rows), minutes)  # fmt: skip
            bar.close()
            self.flush()
        if new:
            info("frozen-feature cache: +%d texts, %d in all (%.1f MiB)", new, len(self), self.nbytes / 2**20)


def _fingerprint(tensors: Sequence[torch.Tensor]) -> str | tuple[int, ...]:
    """A content fingerprint of the frozen tensors. On the CPU their sha256 (`tensors_digest`: ~0.3 s for 124M's
    frozen part; also the trunk's key on disk). On a GPU, computed there (no copy of the weights to the CPU): per
    tensor the sum and the sum of squares of its elements' bits read as integers (int64, wrapping); a change to any
    one element changes it, but it is not a cryptographic hash (the cache guards against mistakes, not attacks)."""
    if all(t.device.type == "cpu" for t in tensors):
        return tensors_digest(tensors)
    integer = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    sums: list[int] = []
    for t in tensors:
        bits = t.detach().reshape(-1).view(integer[t.element_size()]).to(torch.int64)
        sums += [bits.numel(), int(bits.sum()), int((bits * bits).sum())]
    return tuple(sums)


if __name__ == "__main__":
    main()
