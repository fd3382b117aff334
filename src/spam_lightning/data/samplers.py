"""Batch samplers of the data module: length-bucketed training batches, exact mid-epoch resume, and evaluation
shards that see every item once under DDP. Each depends only on (seed, epoch), so a resumed run sees the batches
an uninterrupted one would."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Training batches of similar length (less padding with padding="batch").

    Takes the shuffled order of `sampler` (a DistributedSampler: this rank's share for the epoch), sorts
    each window of `window` batches by length, cuts it into batches and shuffles the batches. Like the
    sampler it depends only on (seed, epoch); Lightning sets the epoch on `self.sampler`.
    """

    def __init__(
        self, sampler: DistributedSampler, lengths: Sequence[int], batch_size: int, drop_last: bool, window: int = 50
    ) -> None:
        self.sampler = sampler
        self.lengths = lengths
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.window = window

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = [b for b in batches if len(b) == self.batch_size]
        generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
        # yield, not return iter(...): the order is drawn when iteration starts, after Lightning's set_epoch
        # (it creates the iterator first), so a run resumed in a later epoch gets that epoch's order.
        yield from [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class ResumableBatchSampler(Sampler[list[int]]):
    """The batches of `batch_sampler`, skipping the first `skip` of them once: a run resumed mid-epoch
    continues with the batch after the last one it trained, not from the epoch's start."""

    def __init__(self, batch_sampler: Sampler[list[int]], skip: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler.sampler  # Lightning calls sampler.set_epoch through this attribute
        self.skip = skip if 0 < skip < len(batch_sampler) else 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.batch_sampler), skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # Lightning counts the skipped batches as done already


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r of w takes items r, r+w, ...; every item is seen exactly once.

    (torch's DistributedSampler pads with repeated items to divide evenly, which would count
    duplicates in validation and test metrics.)
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
