"""Frozen-trunk feature cache: the frozen blocks' output for each text, computed once and reused.

With the book's recipe only the top block(s), the final LayerNorm and the head train. The embeddings
and the blocks below never change and always run in eval mode (no dropout), so their output for a
text is a fixed function of its token ids. The cache keeps that output per text, keyed by the ids:

- pools last_token / first / mean: with causal attention the states of the real tokens do not
  depend on what follows them, so only those (T_i, D) states are kept and re-padded with zeros
  (which nothing reads) to each batch's width;
- pool last: the pooled position is a padding token, so the padded row (T, D) is key and value.

Keying by the ids makes the cache exact by construction: it needs no example indices, serves the
training, validation and test splits alike, and two identical texts share one entry. It is not a
buffer, so checkpoints never contain it (a resumed run refills it), and it empties itself when a
frozen parameter changes. Rows live in RAM, or in memory-mapped files under `directory` for data
sets that do not fit. In RAM they stay on the device that computed them (a GPU's memory when training
on one: no copies and no CPU work per step).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from spam_lightning.data import ShardSampler

log = logging.getLogger("spam_lightning")
info = rank_zero_only(log.info)

Compute = Callable[[torch.Tensor], torch.Tensor]  # (B, T) ids -> (B, T, D) frozen hidden states


class _RamStore:
    def put(self, row: torch.Tensor) -> torch.Tensor:
        return row.clone()


class _MappedStore:
    """Rows copied into memory-mapped files under `directory`; each file is unlinked as soon as it is
    mapped, so nothing is left behind, even after a crash, and the OS pages rows in and out as needed."""

    def __init__(self, directory: str | Path, chunk_bytes: int = 256 << 20) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.chunk_bytes = chunk_bytes
        self.chunk = torch.empty(0, dtype=torch.uint8)
        self.used = 0

    def put(self, row: torch.Tensor) -> torch.Tensor:
        nbytes = row.numel() * row.element_size()
        if self.used + nbytes > self.chunk.numel():
            fd, path = tempfile.mkstemp(dir=self.directory, prefix="frozen-features-", suffix=".bin")
            os.close(fd)
            self.chunk = torch.from_file(path, shared=True, size=max(self.chunk_bytes, nbytes), dtype=torch.uint8)
            os.unlink(path)
            self.used = 0
        view = self.chunk[self.used : self.used + nbytes].view(row.dtype).view(row.shape)
        view.copy_(row)
        self.used += -(-nbytes // 64) * 64  # keep every row 64-byte aligned
        return view


class FrozenFeatureCache:
    """Frozen hidden states per text. `keep_padding`: key and store the whole padded row (pool=last)."""

    def __init__(self, keep_padding: bool, directory: str | Path | None = None) -> None:
        self.keep_padding = keep_padding
        self.directory = directory
        self.rows: dict[bytes, torch.Tensor] = {}
        self._store: _RamStore | _MappedStore = _RamStore() if directory is None else _MappedStore(directory)
        self._marks: tuple[tuple[int, int], ...] | None = None  # (data_ptr, version) of the frozen tensors
        self._digest: bytes | None = None  # their content hash

    # Copies and pickles (DDP spawn, deepcopy) start empty: the rows are recomputable.
    def __getstate__(self) -> dict[str, Any]:
        return {"keep_padding": self.keep_padding, "directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(row.numel() * row.element_size() for row in self.rows.values())

    def clear(self) -> None:
        self.rows = {}
        self._store = _RamStore() if self.directory is None else _MappedStore(self.directory)

    def check(self, frozen: Iterable[torch.Tensor]) -> None:
        """Empty the cache if the frozen tensors' content changed since it was filled."""
        tensors = list(frozen)
        marks = tuple((t.data_ptr(), t._version) for t in tensors)
        if marks == self._marks:
            return
        digest = _digest(tensors)  # only when something may have changed (a load, a move to a device)
        if digest != self._digest:
            if self.rows:
                info("frozen weights changed: the frozen-feature cache starts over")
            self.clear()
            self._digest = digest
        self._marks = marks

    def _widths(self, input_ids: torch.Tensor, lengths: torch.Tensor | None) -> list[int]:
        if self.keep_padding or lengths is None:
            return [input_ids.shape[1]] * input_ids.shape[0]
        return lengths.tolist()

    def fill(self, input_ids: torch.Tensor, lengths: torch.Tensor | None, compute: Compute) -> tuple[list[bytes], int]:
        """Compute and store the rows that are missing; returns every row's key and how many were new."""
        widths = self._widths(input_ids, lengths)
        ids = input_ids.detach().to("cpu", torch.int64).numpy()
        keys = [row[:n].tobytes() for row, n in zip(ids, widths, strict=True)]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # a key's first row
        missing = sorted(i for key, i in first.items() if key not in self.rows)
        if missing:
            width = max(widths[i] for i in missing)
            with torch.no_grad():
                hidden = compute(input_ids[missing, :width]).detach()
            if self.directory is not None:
                hidden = hidden.cpu()
            for row, i in enumerate(missing):
                self.rows[keys[i]] = self._store.put(hidden[row, : widths[i]].contiguous())
        return keys, len(missing)

    def features(self, input_ids: torch.Tensor, lengths: torch.Tensor | None, compute: Compute) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) frozen hidden states on the ids' device, from the cache where possible."""
        keys, _ = self.fill(input_ids, lengths, compute)
        device = input_ids.device
        hidden = pad_sequence([self.rows[key].to(device, non_blocking=True) for key in keys], batch_first=True)
        width = input_ids.shape[1]
        if hidden.shape[1] < width:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, width - hidden.shape[1]))
        return hidden


def _digest(tensors: Sequence[torch.Tensor]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.digest()


def fill_batches(loader: DataLoader, max_tokens: int = 512) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's texts for this epoch (this rank's share), sorted by length and collated by the
    loader's own collate_fn in batches of at most `max_tokens` tokens: filling the cache from these
    wastes next to nothing on padding. Only for datasets with token lists (`.ids`); samplers that would
    draw from the global RNG are not iterated (all texts are used instead), so the training order
    stays what it would be without the cache."""
    dataset = loader.dataset
    ids: Sequence[Sequence[int]] | None = getattr(dataset, "ids", None)
    if ids is None:
        return
    sampler = getattr(loader.batch_sampler, "sampler", None)  # the rank's share when sharded
    if sampler is None:
        sampler = loader.sampler
    deterministic = isinstance(sampler, (DistributedSampler, SequentialSampler, ShardSampler))
    indices = sorted(set(sampler) if deterministic else range(len(ids)), key=lambda i: (len(ids[i]), i))
    start = 0
    while start < len(indices):
        stop = start + 1
        while stop < len(indices) and (stop + 1 - start) * len(ids[indices[stop]]) <= max_tokens:
            stop += 1
        yield loader.collate_fn([dataset[i] for i in indices[start:stop]])
        start = stop
