"""SpamClassifier: freezing, pooling, validation, metrics, optimizer/scheduler, and real learning."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from spam_lightning.data.preprocess import PAD_TOKEN_ID, get_tokenizer
from spam_lightning.training.module import SpamClassifier, warmup_cosine

TINY = {"emb_dim": 32, "n_layers": 3, "n_heads": 2, "context_length": 128}


def tiny(**kwargs) -> SpamClassifier:
    torch.manual_seed(0)
    return SpamClassifier.from_options(**{"arch": TINY, "pretrained": None, **kwargs})


def pad(rows: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([r + [PAD_TOKEN_ID] * (length - len(r)) for r in rows]),
        "lengths": torch.tensor([len(r) for r in rows]),
    }


trainer = quiet_trainer


# --- freezing -----------------------------------------------------------------------------------

HEAD = ("net.gpt.out_head.",)
NORM_HEAD = ("net.gpt.out_head.", "net.gpt.final_norm.")
CASES = {  # trainable_layers -> (trainable parameter prefixes, first_trainable_block) for 3 blocks
    "head": (HEAD, 3),
    0: (NORM_HEAD, 3),
    "last_block": ((*NORM_HEAD, "net.gpt.trf_blocks.2."), 2),
    1: ((*NORM_HEAD, "net.gpt.trf_blocks.2."), 2),
    "last_two_blocks": ((*NORM_HEAD, "net.gpt.trf_blocks.1.", "net.gpt.trf_blocks.2."), 1),
    2: ((*NORM_HEAD, "net.gpt.trf_blocks.1.", "net.gpt.trf_blocks.2."), 1),
    3: ((*NORM_HEAD, "net.gpt.trf_blocks."), 0),
    "all": (("net.gpt.",), 0),
}


@pytest.mark.parametrize("trainable_layers", list(CASES))
def test_freezing(trainable_layers: str | int) -> None:
    prefixes, first_block = CASES[trainable_layers]
    model = tiny(trainable_layers=trainable_layers)
    assert model.first_trainable_block == first_block

    names = {n for n, _ in model.named_parameters()}
    expected = {n for n in names if n.startswith(prefixes)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert model.num_trainable_parameters == sum(p.numel() for n, p in model.named_parameters() if n in expected)

    model.eval()
    model.train()
    for name, module in model.net.gpt.named_modules(prefix="net.gpt"):
        if name in ("net.gpt", "net.gpt.trf_blocks"):
            continue  # containers of both kinds
        assert module.training == (name + ".").startswith(prefixes), name

    batch = pad([[1, 2, 3], [4, 5, 6, 7, 8]], 8)
    assert model.frozen_features(batch["input_ids"]).requires_grad == (trainable_layers == "all")
    model(**batch).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in expected), name


def test_gpt2_124m_counts_match_the_book() -> None:
    model = SpamClassifier.from_options(arch="gpt2", pretrained=None)
    assert model.num_trainable_parameters == 7_090_946
    assert model.num_total_parameters == 124_441_346


# --- pooling ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_text_ids(tokenizer_file: str) -> list[int]:
    ids = get_tokenizer(tokenizer_file).encode("WINNER!! Claim your free prize now")
    assert len(ids) <= 10
    return ids


@pytest.mark.parametrize("pool", ["last_token", "mean", "first"])
def test_pooling_is_padding_invariant(pool: str, short_text_ids: list[int]) -> None:
    model = tiny(pool=pool, dropout=0.1).eval()
    with torch.no_grad():
        logits = [model(**pad([short_text_ids], length)) for length in (10, 50, 120)]
        # the same text in a batch next to a longer one
        batched = model(**pad([short_text_ids, list(range(1, 40))], 50))[:1]
    for other in [*logits[1:], batched]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=0)


def test_pool_last_depends_on_padding(short_text_ids: list[int]) -> None:
    model = tiny(pool="last").eval()
    with torch.no_grad():
        a, b = (model(**pad([short_text_ids], length)) for length in (10, 50))
    assert not torch.allclose(a, b, atol=1e-5)
    assert model(pad([short_text_ids], 10)["input_ids"]).shape == (1, 2)  # lengths not needed


def test_lengths_required_for_last_token() -> None:
    with pytest.raises(ValueError, match="lengths"):
        tiny(pool="last_token")(torch.tensor([[1, 2, 3]]))


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool": "max"}, "model.pool"),
        ({"trainable_layers": "last_three"}, "model.trainable_layers"),
        ({"trainable_layers": 4}, r"model.trainable_layers .*\[0, 3\]"),
        ({"trainable_layers": -1}, "model.trainable_layers"),
        ({"trainable_layers": True}, "model.trainable_layers"),
        ({"lr": 0.0}, "model.lr"),
        ({"lr": -1e-3}, "model.lr"),
        ({"weight_decay": -0.1}, "model.weight_decay"),
        ({"scheduler": "linear"}, "model.scheduler"),
        ({"warmup_steps": -1}, "model.warmup_steps"),
        ({"num_classes": 1}, "model.num_classes"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"pretrained": 3}, "model.pretrained"),
        ({"arch": "gpt3"}, "preset"),
        ({"arch": {"emb_dim": 32, "n_layer": 3}}, "unknown GPT config keys"),
    ],
)
def test_invalid_values_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_hyperparameters_are_plain_and_rebuild_the_model() -> None:
    model = tiny(arch=OmegaConf.create(TINY), trainable_layers=2, pool="mean", dropout=0.1)
    assert type(model.hparams["arch"]) is dict
    assert model.net.gpt.cfg.dropout == 0.1
    rebuilt = SpamClassifier.from_options(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())
    batch = pad([[5, 6, 7]], 4)
    torch.testing.assert_close(rebuilt.eval()(**batch), model.eval()(**batch))


# --- optimizer and scheduler --------------------------------------------------------------------


def test_optimizer_holds_only_trainable_parameters() -> None:
    model = tiny(lr=3e-4, weight_decay=0.05)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    (group,) = optimizer.param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert (group["lr"], group["weight_decay"]) == (3e-4, 0.05)


def test_warmup_cosine_shape() -> None:
    values = [warmup_cosine(step, warmup_steps=4, total_steps=20) for step in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0
    assert all(a > b for a, b in itertools.pairwise(values[4:]))
    assert values[20] == pytest.approx(0.0)
    assert warmup_cosine(5, warmup_steps=0, total_steps=10) == pytest.approx(0.5)


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_scheduler_steps_per_optimizer_step() -> None:
    model = tiny(lr=1e-3, scheduler="cosine", warmup_steps=3, pool="last_token")
    batch = {**pad([[1, 2, 3], [4, 5]], 4), "labels": torch.tensor([0, 1])}
    record = RecordLR()
    trainer(max_steps=10, callbacks=[record]).fit(model, DataLoader([batch], batch_size=None))
    expected = [1e-3 * warmup_cosine(step, 3, 10) for step in range(10)]
    assert record.lrs == pytest.approx(expected)
    assert record.lrs[2] == pytest.approx(1e-3) and record.lrs[-1] < 1e-4


# --- learning on real messages ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sixteen_messages(sms_tsv: Path, tokenizer_file: str) -> dict[str, torch.Tensor]:
    """The first 8 ham and 8 spam messages, tokenized (at most 64 tokens) and right-padded."""
    texts: dict[str, list[str]] = {"ham": [], "spam": []}
    for line in sms_tsv.read_text(encoding="utf-8").splitlines():
        label, text = line.split("\t", 1)
        if len(texts[label]) < 8:
            texts[label].append(text)
    tokenizer = get_tokenizer(tokenizer_file)
    rows = [tokenizer.encode(t)[:64] for t in texts["ham"] + texts["spam"]]
    return {**pad(rows, max(map(len, rows))), "labels": torch.tensor([0] * 8 + [1] * 8)}


def test_tiny_model_overfits_real_messages(
    sixteen_messages: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = SpamClassifier.from_options(
        arch={"emb_dim": 64, "n_layers": 2, "n_heads": 4, "context_length": 64},
        pretrained=None,
        trainable_layers="all",
        pool="last_token",
        lr=1e-3,
    )
    loader = DataLoader([sixteen_messages], batch_size=None)
    stop = EarlyStopping("train/loss", stopping_threshold=0.01, patience=1000, check_on_train_epoch_end=True)
    fit = trainer(max_steps=300, callbacks=[stop])
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        fit.fit(model, loader)
    assert "trainable parameters" in caplog.text
    assert fit.global_step < 300, "did not reach the loss threshold"

    (val,) = fit.validate(model, loader, verbose=False)
    assert val["val/accuracy"] == 1.0
    assert val["val/f1"] == 1.0 and val["val/auroc"] == 1.0
    assert val["val/loss"] < 0.05

    (test,) = fit.test(model, loader, verbose=False)
    assert torch.equal(model.test_confusion_matrix, torch.tensor([[8, 0], [0, 8]]))
    assert (test["test/tp"], test["test/tn"], test["test/fp"], test["test/fn"]) == (8, 8, 0, 0)
    assert test["test/precision"] == 1.0 and test["test/recall"] == 1.0

    with torch.no_grad():  # the network alone, as prediction runs it
        probs = model.eval().net(sixteen_messages["input_ids"], sixteen_messages["lengths"]).softmax(dim=-1)
    assert probs.shape == (16, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(16))
    assert torch.equal(probs.argmax(dim=1), sixteen_messages["labels"])


def test_multiclass_metrics() -> None:
    model = tiny(num_classes=3, pool="last_token")
    batch = {**pad([[1, 2, 3], [4, 5], [6], [7, 8]], 4), "labels": torch.tensor([0, 1, 2, 1])}
    with torch.no_grad():
        predicted = model(batch["input_ids"], batch["lengths"]).argmax(dim=1)
    (val,) = trainer().validate(model, DataLoader([batch], batch_size=None), verbose=False)
    per_class_keys = {f"{m}_{c}" for m in ("precision", "recall", "f1") for c in range(3)}  # no labels: class ids
    assert set(val) == {f"val/{k}" for k in ("loss", "accuracy", "precision", "recall", "f1", "auroc", *per_class_keys)}
    for m in ("precision", "recall", "f1"):
        assert math.isclose(val[f"val/{m}"], sum(val[f"val/{m}_{c}"] for c in range(3)) / 3, abs_tol=1e-6)
    per_class = [(predicted[batch["labels"] == c] == c).float().mean().item() for c in range(3)]
    assert math.isclose(val["val/accuracy"], sum(per_class) / 3, abs_tol=1e-6)  # macro average
