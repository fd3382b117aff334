"""Frozen-trunk feature cache: the frozen blocks' output for each text, computed once and reused.

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
frozen trunk, and bounded by the disk rather than RAM (`spam_lightning.trunk_store`).

`FrozenFeatureCache` is a Lightning callback. `SpamClassifier.configure_callbacks` adds it when the cache is
exact and wanted. Before each epoch it fills itself from the data module's `token_ids(split, epoch)` in
length-sorted batches (little padding); before each step it puts the batch's frozen features into the
batch under `FROZEN_FEATURES`, where the step takes them instead of running the frozen blocks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm import tqdm

from spam_lightning.preprocess import pad
from spam_lightning.trunk_store import TrunkStore, tensors_digest, trunk_key

log = logging.getLogger("spam_lightning")
info = rank_zero_only(log.info)

Compute = Callable[[torch.Tensor], torch.Tensor]  # (B, T) ids -> (B, T, D) frozen hidden states
FROZEN_FEATURES = "frozen_features"  # the batch key of the precomputed frozen part
TOKEN_IDS = "token_ids"  # the batch key of the unpadded token ids (CPU lists), when the data module adds them
PROGRESS_LOG_SECONDS = 60  # a fill longer than this logs its progress (the bar is not in logs)
PENDING_BYTES = 64 << 20  # with a directory: new rows go to disk in segments of about this size (held twice while
# written: the rows and their concatenation)


class FrozenFeatureCache(Callback):
    """Frozen hidden states per text. `keep_padding`: key and store the whole padded row (pool=last).
    `directory`: rows also go to disk there, shared with other runs (`spam_lightning.trunk_store`), at most
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
        self.check(pl_module.frozen_parameters())
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
        (its keys depend on each batch's width)."""
        datamodule = trainer.datamodule
        preprocessing = getattr(datamodule, "preprocessing", None)
        loaders = [loaders] if isinstance(loaders, DataLoader) else list(loaders or [])
        if preprocessing is None or not loaders or batches_run < sum(len(loader) for loader in loaders):
            return
        if self.keep_padding and preprocessing.pad_length is None:
            return
        self.check(pl_module.frozen_parameters())
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
            tqdm(total=len(rows), desc=f"frozen-feature cache ({split})", unit="text", disable=not show) as bar,
        ):
            self.load_stored()
            if all(self._key(ids, preprocessing.pad_length or 0) in self.rows for ids in rows):
                bar.update(len(rows))
                return
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
