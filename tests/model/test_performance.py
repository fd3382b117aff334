"""The fast paths change nothing but speed: frozen-feature cache, one-position top block, dynamic padding.

Correctness only (no timings): a cached run's loss curve equals the uncached one's, results do not
depend on how texts are grouped into batches or padded, and the cache says why it is off.
"""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.samplers import LengthBucketBatchSampler
from spam_lightning.training.module import SpamClassifier

TINY = {"emb_dim": 32, "n_layers": 3, "n_heads": 2, "context_length": 128}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def datamodule(data_dir: str, tokenizer_file: str, **kwargs: Any) -> SmsSpamDataModule:
    return SmsSpamDataModule(data_dir=data_dir, tokenizer_file=tokenizer_file, **kwargs)


def model(**kwargs: Any) -> SpamClassifier:
    L.seed_everything(123)
    return SpamClassifier.from_options(
        **{"arch": TINY, "pretrained": None, "trainable_layers": 1, "lr": 1e-3, **kwargs}
    )


def trainer(**kwargs: Any) -> L.Trainer:
    return quiet_trainer(**{"use_distributed_sampler": False, "max_epochs": 2, "limit_train_batches": 25, **kwargs})


class RecordLoss(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(clf: SpamClassifier, dm: SmsSpamDataModule, **trainer_kwargs: Any) -> tuple[list[float], dict[str, float]]:
    record = RecordLoss()
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    fitter = trainer(callbacks=[record, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs)
    fitter.fit(clf, datamodule=dm, ckpt_path=ckpt_path)
    return record.losses, {k: float(v) for k, v in fitter.callback_metrics.items() if k.startswith("val/")}


CASES = {
    "last_token, per-batch padding": ({"pool": "last_token"}, {"pool": "last_token"}),
    "book: last, padding to 120": ({"pool": "last"}, {"pool": "last"}),
    "mean, bucketed batches": ({"pool": "mean"}, {"pool": "mean", "bucket_by_length": True}),
    "dropout 0.1 in the trainable block": ({"pool": "last_token", "dropout": 0.1}, {"pool": "last_token"}),
    "two trainable blocks": ({"pool": "first", "trainable_layers": 2}, {"pool": "first"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cache_gives_the_same_loss_curve(case: str, data_dir: str, tokenizer_file: str, tmp_path: Path) -> None:
    model_kwargs, data_kwargs = CASES[case]
    runs = {}
    for cache in (False, True):
        clf = model(cache_frozen=cache, **model_kwargs)
        runs[cache] = fit(clf, datamodule(data_dir, tokenizer_file, **data_kwargs))
        if cache:
            # What the run read: 25 batches of 8 training texts (limit_train_batches) and the 149 validation texts
            # (fewer if two texts are the same); a limited epoch fills only what it reads.
            assert clf.feature_cache is not None and len(clf.feature_cache) > 300
    (plain_losses, plain_val), (cached_losses, cached_val) = runs[False], runs[True]
    assert len(cached_losses) == 50
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(plain_losses), **TOLERANCE)
    assert cached_val.keys() == plain_val.keys() and cached_val
    for key in plain_val:
        assert cached_val[key] == pytest.approx(plain_val[key], rel=1e-4, abs=1e-5), key


def test_cache_empties_when_frozen_weights_change(data_dir: str, tokenizer_file: str) -> None:
    dm = datamodule(data_dir, tokenizer_file, pool="last_token")
    clf = model(pool="last_token")
    fitter = trainer(max_epochs=1, limit_train_batches=2)
    fitter.fit(clf, datamodule=dm)
    assert len(clf.feature_cache) > 149  # the validation texts and the 16 training texts read

    clf.load_state_dict(copy.deepcopy(clf.state_dict()))  # same values: the cache stays
    clf.feature_cache.check(clf.frozen_parameters())
    assert len(clf.feature_cache) > 149
    (val_before,) = fitter.validate(clf, datamodule=dm, verbose=False)

    with torch.no_grad():
        clf.net.gpt.trf_blocks[0].ff.layers[0].weight.mul_(2.0)  # another frozen trunk
    (cached,) = fitter.validate(clf, datamodule=dm, verbose=False)
    uncached_clf = copy.deepcopy(clf)
    assert len(uncached_clf.feature_cache) == 0  # copies start empty
    uncached_clf.feature_cache = None
    (uncached,) = fitter.validate(uncached_clf, datamodule=dm, verbose=False)
    assert cached["val/loss"] == pytest.approx(uncached["val/loss"], rel=1e-5)
    assert cached["val/loss"] != pytest.approx(val_before["val/loss"], rel=1e-5)
    assert len(pickle.loads(pickle.dumps(clf.feature_cache))) == 0


def test_the_frozen_tensors_are_checked_once_an_epoch_not_every_batch(
    data_dir: str, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's check lists the frozen tensors (Python work per tensor: 178 at 124M, 754 at XL) at the start of
    each epoch of each stage, where loads and moves happen, and not before every batch."""
    clf = model(pool="last_token")
    listed: list[int] = []
    frozen_parameters = clf.frozen_parameters

    def counted() -> list[torch.Tensor]:
        listed.append(1)
        return frozen_parameters()

    monkeypatch.setattr(clf, "frozen_parameters", counted)
    trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=3, num_sanity_val_steps=1).fit(
        clf, datamodule=datamodule(data_dir, tokenizer_file, pool="last_token")
    )
    assert len(listed) == 1 + 2 * 2  # the sanity check's validation, then each epoch's training and validation


def test_results_do_not_depend_on_batching_or_padding(data_dir: str, tokenizer_file: str) -> None:
    clf = model(pool="last_token", cache_frozen=False)
    fit(clf, datamodule(data_dir, tokenizer_file, pool="last_token"), max_epochs=1)
    results = []
    for eval_batch_size, padding in ((8, "batch"), (32, "batch"), (1, "batch"), (32, "longest_train")):
        dm = datamodule(data_dir, tokenizer_file, padding=padding, eval_batch_size=eval_batch_size)
        (val,) = trainer().validate(clf, datamodule=dm, verbose=False)
        results.append(val)
    for other in results[1:]:
        for key, value in results[0].items():
            assert other[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("pool", ["last_token", "last", "first"])
def test_one_position_top_block_matches_the_full_block(pool: str) -> None:
    clf = model(pool=pool, dropout=0.1).eval()
    block = clf.net.gpt.trf_blocks[-1]
    x = torch.randn(4, 9, TINY["emb_dim"])
    pos = torch.tensor([8, 0, 3, 5])
    with torch.no_grad():
        torch.testing.assert_close(block.forward_at(x, pos), block(x)[torch.arange(4), pos], rtol=1e-5, atol=1e-6)


def test_one_position_top_block_trains_as_the_full_block() -> None:
    """The same gradient for every parameter of the top block (training uses forward_at)."""
    block = model(pool="last_token").net.gpt.trf_blocks[-1]
    x = torch.randn(4, 9, TINY["emb_dim"])
    pos = torch.tensor([8, 0, 3, 5])
    target = torch.randn(4, TINY["emb_dim"])
    grads = []
    for outputs in (lambda: block.forward_at(x, pos), lambda: block(x)[torch.arange(4), pos]):
        block.zero_grad()
        (outputs() * target).sum().backward()
        grads.append({name: p.grad.clone() for name, p in block.named_parameters()})
    assert grads[0].keys() == grads[1].keys() == dict(block.named_parameters()).keys()  # each has a gradient
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"trainable_layers": "all"}, "trainable_layers=all: the embeddings train"),
        ({"trainable_layers": 3}, "trainable_layers=3: every block trains"),
        ({"cache_frozen": False}, "model.cache_frozen=false"),
    ],
)
def test_cache_off_reasons_are_logged(kwargs: dict, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        clf = model(**kwargs)
    assert clf.feature_cache is None and reason in clf.cache_off_reason
    assert f"frozen-feature cache off: {reason}" in caplog.text


def test_cache_on_is_logged_and_true_is_checked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        assert model(dropout=0.2, trainable_layers="last_two_blocks").feature_cache is not None
    assert "frozen-feature cache on: embeddings + blocks 0-0" in caplog.text
    with pytest.raises(ValueError, match="cache_frozen=true, but trainable_layers=all"):
        model(cache_frozen=True, trainable_layers="all")
    for bad in ({"cache_frozen": "yes"}, {"compile": "no"}, {"tf32": 1}, {"cache_dir": 3}):
        with pytest.raises(ValueError, match=r"model\."):
            model(**bad)


def test_padding_auto_follows_the_pool(data_dir: str, tokenizer_file: str) -> None:
    for pool, pad_length in (("last", 120), ("last_token", None), ("mean", None), ("first", None)):
        dm = datamodule(data_dir, tokenizer_file, pool=pool)
        dm.setup("fit")
        assert dm.pad_length == pad_length, pool


def test_length_buckets(data_dir: str, tokenizer_file: str) -> None:
    dm = datamodule(data_dir, tokenizer_file, padding="batch", bucket_by_length=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler)  # inside ResumableBatchSampler
    assert isinstance(sampler, LengthBucketBatchSampler)
    epochs = []
    for epoch in (0, 0, 1):
        sampler.sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs[0] == epochs[1] != epochs[2]
    batches = epochs[0]
    assert len(batches) == len(loader) == 1045 // 8 and all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 8 * len(batches)
    widths = [b["input_ids"].shape[1] for b in loader]
    lengths = [len(ids) for ids in dm.datasets["train"].ids]
    assert sum(widths) / len(widths) < 1.2 * sum(lengths) / len(lengths)  # little padding
