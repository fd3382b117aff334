"""The frozen-feature cache on disk (model.cache_dir): shared by runs with the same frozen trunk, exact, checked
on read, safe under concurrent jobs, bounded in size, cleaned by its command. Correctness only, no timings."""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers.records import resave_checkpoint
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.files import file_sha256
from spam_lightning.training.feature_cache import SEGMENT_SUFFIX, list_trunks
from spam_lightning.training.module import SpamClassifier

TINY = {"emb_dim": 32, "n_layers": 3, "n_heads": 2, "context_length": 128}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def model(**kwargs: Any) -> SpamClassifier:
    L.seed_everything(123)
    args = {"arch": TINY, "pretrained": None, "init_seed": 5, "trainable_layers": 1, "pool": "last_token"}
    return SpamClassifier.from_options(**{**args, "lr": 1e-3, **kwargs})


class Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(clf: SpamClassifier, data_dir: str, tokenizer_file: str, **kwargs: Any) -> tuple[list[float], dict]:
    """Two epochs on the SMS splits, then a test: the loss curve and the test metrics."""
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    losses = Losses()
    trainer = quiet_trainer(max_epochs=2, callbacks=[losses, *kwargs.pop("callbacks", [])], **kwargs)
    trainer.fit(clf, datamodule=dm)
    (tested,) = trainer.test(clf, datamodule=dm, verbose=False)
    return losses.losses, tested


def count_trunk_passes(clf: SpamClassifier) -> list[int]:
    """Wrap the model's frozen part: the list grows by each call's number of texts."""
    texts: list[int] = []
    frozen_features = clf.frozen_features

    def counted(input_ids: torch.Tensor) -> torch.Tensor:
        texts.append(len(input_ids))
        return frozen_features(input_ids)

    clf.frozen_features = counted  # type: ignore[method-assign]
    return texts


def test_a_second_run_reads_the_trunk_from_disk_and_trains_identically(
    data_dir: str, tokenizer_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_memory = model()
    reference = fit(in_memory, data_dir, tokenizer_file)
    cache = tmp_path / "cache"

    first = model(cache_dir=str(cache))
    first_passes = count_trunk_passes(first)
    assert fit(first, data_dir, tokenizer_file)[0] == pytest.approx(reference[0], rel=1e-5, abs=1e-6)
    assert sum(first_passes) == len(first.feature_cache) > 1300  # each distinct text of the three splits once
    (trunk,) = list_trunks(cache)
    assert trunk["segments"] >= 1 and json.loads((trunk["path"] / "trunk.json").read_text())["device_type"] == "cpu"

    second = model(cache_dir=str(cache), lr=3e-3)  # another job of a sweep over model.lr: same trunk
    second_passes = count_trunk_passes(second)
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        losses, tested = fit(second, data_dir, tokenizer_file)
    assert second_passes == [] and "texts read from" in caplog.text
    again = fit(model(lr=3e-3), data_dir, tokenizer_file)  # the same job without the disk cache
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(again[0]), **TOLERANCE)
    assert tested == pytest.approx(again[1], rel=1e-5, abs=1e-6)
    assert len(list_trunks(cache)) == 1


def test_other_frozen_weights_or_depth_get_their_own_trunk(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    for kwargs in ({}, {"init_seed": 6}, {"trainable_layers": 2}, {"pool": "mean"}):
        quiet_trainer(max_epochs=1, limit_train_batches=2).validate(model(cache_dir=str(cache), **kwargs), dm)
    assert len(list_trunks(cache)) == 3  # pool=mean keeps the same rows as last_token: it shares the first trunk


def test_a_corrupt_segment_is_deleted_and_computed_again(
    data_dir: str, tokenizer_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    (expected,) = quiet_trainer().validate(model(cache_dir=str(cache)), dm, verbose=False)
    (segment,) = list_trunks(cache)[0]["path"].glob(f"*{SEGMENT_SUFFIX}")
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last row
    segment.write_bytes(bytes(data))
    clf = model(cache_dir=str(cache))
    passes = count_trunk_passes(clf)
    with caplog.at_level(logging.WARNING, logger="spam_lightning"):
        (again,) = quiet_trainer().validate(clf, dm, verbose=False)
    assert "is corrupt (sha256 differs from its name); deleted" in caplog.text and sum(passes) == len(clf.feature_cache)
    assert again == pytest.approx(expected, rel=1e-6)
    # written again: the same rows, so the same bytes and name, now whole
    assert file_sha256(segment) == segment.stem and len(list(segment.parent.glob(f"*{SEGMENT_SUFFIX}"))) == 1


def test_the_size_limit_drops_least_recently_used_trunks(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    """A limit of 2.5 trunks keeps the two newest, within the limit (each trunk's validation rows: ~60 KiB)."""
    cache = tmp_path / "cache"
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    quiet_trainer().validate(model(cache_dir=str(cache), init_seed=1, cache_max_gb=None), dm)
    (first,) = list_trunks(cache)
    limit = 2.5 * first["bytes"]
    for seed in (2, 3):
        quiet_trainer().validate(model(cache_dir=str(cache), init_seed=seed, cache_max_gb=limit / 2**30), dm)
    trunks = list_trunks(cache)
    assert len(trunks) == 2 and first["path"] not in {t["path"] for t in trunks}  # the oldest went
    assert sum(t["bytes"] for t in trunks) <= limit
    newest = model(init_seed=3).net.gpt.tok_emb.weight
    assert [*newest.shape, "float32"] in [t["info"]["tensors"][0] for t in trunks]


def _fill_in_a_process(cache: str, data_dir: str, tokenizer_file: str, queue: Any) -> None:
    torch.set_num_threads(1)
    clf = model(cache_dir=cache)
    passes = count_trunk_passes(clf)
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    quiet_trainer().validate(clf, dm, verbose=False)
    queue.put((sum(passes), len(clf.feature_cache)))


def test_concurrent_jobs_compute_each_row_once(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    jobs = [
        context.Process(target=_fill_in_a_process, args=(str(tmp_path / "c"), data_dir, tokenizer_file, queue))
        for _ in range(2)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0]
    (first, rows), (second, rows_again) = sorted(queue.get(timeout=5) for _ in jobs)
    assert (first, second) == (0, rows) and rows == rows_again > 140  # one computed the texts, the other read them


def test_the_clean_command_lists_and_deletes(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    quiet_trainer().validate(model(cache_dir=str(cache)), dm, verbose=False)
    command = [sys.executable, "-m", "spam_lightning.training.feature_cache", str(cache)]
    listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "1 trunks" in listed and "4 frozen tensors, cpu, autocast None" in listed
    cleaned = subprocess.run([*command, "--clean"], capture_output=True, text=True, check=True).stdout
    assert "freed" in cleaned and list_trunks(cache) == []


def test_random_init_checkpoints_hold_only_the_trained_weights(
    data_dir: str, tokenizer_file: str, tmp_path: Path
) -> None:
    from spam_lightning.errors import CheckpointError
    from spam_lightning.inference.checkpoint import load_trained

    clf = model()
    save = ModelCheckpoint(dirpath=tmp_path, filename="best")
    fit(clf, data_dir, tokenizer_file, callbacks=[save], enable_checkpointing=True)
    ckpt = torch.load(tmp_path / "best.ckpt", weights_only=True)
    trained = {f"net.{name}" for name, p in clf.net.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trained
    assert not any(".trf_blocks.0." in key or "tok_emb" in key for key in ckpt["state_dict"])
    loaded = load_trained(tmp_path / "best.ckpt").net
    ids, lengths = torch.randint(0, 50257, (3, 7)), torch.tensor([7, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, lengths), clf.net.eval()(ids, lengths))

    ckpt["spam_lightning"]["frozen_weights"]["init_seed"] = 6  # another seed: other weights, refused
    resave_checkpoint(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="random weights from seed 6, but this torch"):
        load_trained(tmp_path / "other.ckpt")


def test_a_resumed_run_goes_on_identically(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    """Resume from last.ckpt with the rows on disk (the new process reads them) and the uncached run's curve."""
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    full = Losses()
    quiet_trainer(max_epochs=2, callbacks=[full]).fit(model(cache_frozen=False), datamodule=dm)

    cache, first, second = str(tmp_path / "cache"), Losses(), Losses()
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(max_epochs=1, callbacks=[first, save], enable_checkpointing=True)
    trainer.fit(model(cache_dir=cache), datamodule=dm)
    resumed = model(cache_dir=cache)
    passes = count_trunk_passes(resumed)
    trainer = quiet_trainer(max_epochs=2, callbacks=[second])
    trainer.fit(resumed, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert passes == []
    torch.testing.assert_close(torch.tensor(first.losses + second.losses), torch.tensor(full.losses), **TOLERANCE)


def test_rows_computed_by_the_steps_are_written_too(data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    """An epoch limited to some batches fills no split ahead: the steps compute their rows, written at its end."""
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    clf = model(cache_dir=str(tmp_path / "cache"))
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(clf, datamodule=dm)
    (trunk,) = list_trunks(tmp_path / "cache")
    # 2 training batches and 1 validation batch of 8 texts, written when validation (inside the epoch) ends
    assert trunk["segments"] == 1 and len(clf.feature_cache) == 16 + 8
    assert clf.feature_cache.pending == {}


def test_a_long_fill_logs_its_progress(
    data_dir: str, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("spam_lightning.training.feature_cache.PROGRESS_LOG_SECONDS", 0)
    dm = SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, pool="last_token", context_length=128)
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        quiet_trainer().validate(model(), dm, verbose=False)
    lines = [r.message for r in caplog.records if r.message.startswith("frozen-feature cache (validation): ")]
    assert lines and lines[-1].startswith("frozen-feature cache (validation): 149 of 149 texts, about 0 min left")


def test_a_progress_bar_only_for_a_fill_that_computes(
    data_dir: str, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later epochs find their split cached: no bar for them (it printed two empty bars an epoch)."""
    import spam_lightning.training.feature_cache as feature_cache

    bars: list[str] = []
    real_tqdm = feature_cache.tqdm

    def recording_tqdm(*args: Any, **kwargs: Any) -> Any:
        bars.append(kwargs["desc"])
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "tqdm", recording_tqdm)
    fit(model(), data_dir, tokenizer_file)  # two epochs, then the test split
    assert bars == [f"frozen-feature cache ({split})" for split in ("train", "validation", "test")]
