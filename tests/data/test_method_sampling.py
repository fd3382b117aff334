"""Which texts a step sees: mid-epoch resume and DDP sharding, fast (what the slow kill/DDP tests check end to end).

- Resume: after k processed batches of an epoch, a restarted run's next batch is batch k of the uninterrupted
  order, for several k and epochs, with plain and length-bucketed batches; the skip applies once.
- Evaluation shards (ShardSampler): disjoint and covering, for world sizes 1-5 and odd sizes.
- Training shards (DistributedSampler, as the data module builds them): rank r of w takes items r, r+w, ...
  of the one (seed, epoch) permutation every rank shares, every rank the same number of batches.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.samplers import LengthBucketBatchSampler, ResumableBatchSampler, ShardSampler
from spam_lightning.training.module import SpamClassifier

N_ITEMS = 53  # not a multiple of the batch size
LENGTHS = [(7 * i) % 23 + 1 for i in range(N_ITEMS)]


def make_batches(kind: str, drop_last: bool) -> Sampler[list[int]]:
    """A fresh batch sampler, as a restarted process builds it."""
    sampler = DistributedSampler(range(N_ITEMS), num_replicas=1, rank=0, shuffle=True, seed=7)
    if kind == "plain":
        return BatchSampler(sampler, batch_size=4, drop_last=drop_last)
    return LengthBucketBatchSampler(sampler, LENGTHS, batch_size=4, drop_last=drop_last, window=3)


def epoch_order(batches: Sampler[list[int]], epoch: int) -> list[list[int]]:
    batches.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    return list(batches)


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("kind", ["plain", "buckets"])
def test_resumed_epoch_continues_with_batch_k(kind: str, drop_last: bool) -> None:
    for epoch in (0, 1, 4):
        full = epoch_order(make_batches(kind, drop_last), epoch)
        assert len(full) == (13 if drop_last else 14)
        for k in range(len(full)):
            resumed = ResumableBatchSampler(make_batches(kind, drop_last), skip=k)
            assert len(resumed) == len(full)  # Lightning counts the k skipped batches as done
            resumed.sampler.set_epoch(epoch)  # what Lightning calls at the start of each epoch
            assert list(resumed) == full[k:], f"epoch {epoch}, resumed after {k} batches"
            assert list(resumed) == full, "the skip applies to the resumed epoch only"
            resumed.sampler.set_epoch(epoch + 1)
            assert list(resumed) == epoch_order(make_batches(kind, drop_last), epoch + 1)


@pytest.mark.parametrize("kind", ["plain", "buckets"])
def test_each_epoch_has_its_own_order(kind: str) -> None:
    """A new permutation every epoch (seed + epoch), with plain and length-bucketed batches: the same order in every
    epoch would show the model the same batches in the same sequence."""
    orders = [epoch_order(make_batches(kind, drop_last=False), epoch) for epoch in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert orders[1] == epoch_order(make_batches(kind, drop_last=False), 1)  # and it depends on the epoch alone


class FixedOrder(Sampler[int]):
    """The same items in the same order every epoch, with the seed and epoch a DistributedSampler has."""

    def __init__(self) -> None:
        self.seed, self.epoch = 7, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(range(N_ITEMS))

    def __len__(self) -> int:
        return N_ITEMS


def test_length_buckets_are_drawn_anew_each_epoch() -> None:
    """Bucketing shuffles its batches with (seed + epoch): from the same item order, each epoch's batches come in
    another order (a generator seeded without the epoch would repeat it)."""
    batches = LengthBucketBatchSampler(FixedOrder(), LENGTHS, batch_size=4, drop_last=False, window=3)
    orders = [epoch_order(batches, epoch) for epoch in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert sorted(map(sorted, orders[0])) == sorted(map(sorted, orders[1]))  # the same buckets, in another order


def test_no_skip_is_the_plain_order() -> None:
    full = epoch_order(make_batches("plain", True), 2)
    resumed = ResumableBatchSampler(make_batches("plain", True))
    resumed.sampler.set_epoch(2)
    assert list(resumed) == full


# --- a real mid-epoch resume through Lightning, with the data module's loaders -----------------------


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *args: Any) -> None:
        self.batches.append(batch["input_ids"].clone())


class SaveAtSteps(Callback):
    """trainer.save_checkpoint after the given optimizer steps, as LastCheckpoint(every_n_steps) does."""

    def __init__(self, folder: Path, steps: tuple[int, ...]) -> None:
        self.folder = folder
        self.steps = steps

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step in self.steps:
            trainer.save_checkpoint(self.folder / f"step{trainer.global_step}.ckpt")


def fit(
    data_dir: str, tokenizer_file: str, callbacks: list[Callback], bucket_by_length: bool, ckpt_path: Path | None = None
) -> None:
    L.seed_everything(123)
    model = SpamClassifier.from_options(
        arch={"emb_dim": 16, "n_layers": 1, "n_heads": 2, "context_length": 128},
        pretrained=None,
        trainable_layers="all",
        pool="last_token",
        lr=1e-3,
    )
    dm = SmsSpamDataModule(
        data_dir=data_dir,
        tokenizer_file=tokenizer_file,
        pool="last_token",
        batch_size=8,
        bucket_by_length=bucket_by_length,
    )
    trainer = quiet_trainer(
        max_epochs=3, limit_train_batches=5, limit_val_batches=0, use_distributed_sampler=False, callbacks=callbacks
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)


def check_resume(
    data_dir: str, tokenizer_file: str, folder: Path, bucket_by_length: bool, steps: tuple[int, ...]
) -> None:
    """Runs resumed from checkpoints written after `steps` see the uninterrupted run's batches from there on."""
    uninterrupted = RecordBatches()
    fit(data_dir, tokenizer_file, [uninterrupted, SaveAtSteps(folder, steps)], bucket_by_length)
    assert len(uninterrupted.batches) == 15
    for step in steps:
        resumed = RecordBatches()
        fit(data_dir, tokenizer_file, [resumed], bucket_by_length, folder / f"step{step}.ckpt")
        assert len(resumed.batches) == 15 - step, f"resumed after step {step}"
        for i, (ours, theirs) in enumerate(zip(resumed.batches, uninterrupted.batches[step:], strict=True)):
            assert torch.equal(ours, theirs), f"resumed after step {step}: batch {step + i} differs"


@pytest.mark.parametrize(
    ("bucket_by_length", "steps"),
    [
        (False, (2, 7)),  # after 2 batches of epoch 0, after 2 batches of epoch 1 (3 epochs of 5 batches)
        (True, (2,)),
        (True, (7,)),  # bucketed order of a later epoch: drawn after set_epoch
    ],
    ids=["plain", "buckets-epoch0", "buckets-epoch1"],
)
def test_mid_epoch_resume_through_lightning(
    data_dir: str, tokenizer_file: str, tmp_path: Path, bucket_by_length: bool, steps: tuple[int, ...]
) -> None:
    check_resume(data_dir, tokenizer_file, tmp_path, bucket_by_length, steps)


def test_resume_from_the_end_of_a_limited_epoch(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    check_resume(data_dir, tokenizer_file, tmp_path, False, steps=(5,))


# --- DDP shards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_evaluation_shards_are_disjoint_and_cover_every_item(world_size: int) -> None:
    for size in (0, 1, 2, 3, 4, 7, 11, 149, 300):
        shards = [list(ShardSampler(size, rank, world_size)) for rank in range(world_size)]
        assert sorted(i for shard in shards for i in shard) == list(range(size)), (size, shards)
        assert [len(ShardSampler(size, rank, world_size)) for rank in range(world_size)] == list(map(len, shards))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.fixture(scope="module")
def datamodule(data_dir: str, tokenizer_file: str) -> SmsSpamDataModule:
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", batch_size=8)
    dm.setup()
    return dm


def as_rank(dm: SmsSpamDataModule, rank: int, world_size: int) -> None:
    """What the data module reads from a DDP trainer: its rank, the world size, and that no restart is under way."""
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=rank, world_size=world_size, fit_loop=SimpleNamespace(restarting=False)
    )


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_data_module_evaluation_loaders_shard_every_split(datamodule: SmsSpamDataModule, world_size: int) -> None:
    try:
        for split in ("train", "validation", "test"):
            seen: list[int] = []
            for rank in range(world_size):
                as_rank(datamodule, rank, world_size)
                seen += [i for batch in datamodule.eval_dataloader(split).batch_sampler for i in batch]
            assert sorted(seen) == list(range(len(datamodule.datasets[split]))), split
    finally:
        datamodule.trainer = None


@pytest.mark.parametrize("bucket_by_length", [False, True])
@pytest.mark.parametrize("world_size", [2, 3, 4, 5])
def test_data_module_training_shards(datamodule: SmsSpamDataModule, world_size: int, bucket_by_length: bool) -> None:
    n = len(datamodule.datasets["train"])
    datamodule.bucket_by_length = bucket_by_length
    try:
        for epoch in (0, 3):
            as_rank(datamodule, 0, 1)
            single = datamodule.train_dataloader().batch_sampler
            single.sampler.set_epoch(epoch)
            permutation = list(single.sampler)  # the (seed, epoch) order of one process
            padded = permutation + permutation[: -n % world_size]  # DistributedSampler repeats the first few
            shards = []
            for rank in range(world_size):
                as_rank(datamodule, rank, world_size)
                batches = datamodule.train_dataloader().batch_sampler
                batches.sampler.set_epoch(epoch)
                order = list(batches)
                share = padded[rank::world_size]  # this rank's items, in the shared order
                assert len(order) == len(batches) == len(share) // datamodule.batch_size  # drop_last
                assert all(len(batch) == datamodule.batch_size for batch in order)
                shard = [i for batch in order for i in batch]
                if bucket_by_length:  # reordered by length within the rank's share
                    assert not Counter(shard) - Counter(share), f"rank {rank} of {world_size}"
                else:
                    assert shard == share[: len(shard)], f"rank {rank} of {world_size}"
                shards.append(shard)
            for a in range(world_size):
                for b in range(a + 1, world_size):
                    assert len(set(shards[a]) & set(shards[b])) <= len(padded) - n < world_size
    finally:
        datamodule.trainer = None
        datamodule.bucket_by_length = False
