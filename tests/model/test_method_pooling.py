"""The method, pinned down: which hidden state each pooling reads, and that training reads the same one.

Pooling is checked against rows picked by hand from a known hidden-state tensor (not against another
code path that could share a bug), and the logits the training loss is computed from are compared with
forward() in eval mode, for every pool, with and without the frozen-feature cache.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from spam_lightning.data.preprocess import PAD_TOKEN_ID
from spam_lightning.model.gpt import POOLS, GPTModel, make_config
from spam_lightning.training.module import SpamClassifier

TINY = {"emb_dim": 16, "n_layers": 3, "n_heads": 2, "context_length": 32, "dropout": 0.0}
LENGTHS = [7, 1, 4, 2]  # true token counts of the rows; the padded width is 7
WIDTH = max(LENGTHS)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def test_the_pools_are_the_four_documented_ones() -> None:
    assert set(POOLS) == {"last", "last_token", "first", "mean"}  # a new pool needs an expectation below


def tiny_gpt() -> GPTModel:
    """A tiny GPT in eval mode whose final LayerNorm is not the identity-like default (weight 1, bias 0)."""
    torch.manual_seed(0)
    gpt = GPTModel(make_config(TINY))
    with torch.no_grad():
        gpt.final_norm.weight.normal_()
        gpt.final_norm.bias.normal_()
    return gpt.eval()


def hidden_states() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(len(LENGTHS), WIDTH, TINY["emb_dim"])


def expected_rows(norm: torch.nn.Module, top: torch.Tensor, pool: str) -> torch.Tensor:
    """What `pool` means, row by row: top (B, T, D) are the top block's outputs."""
    rows = []
    for b, n in enumerate(LENGTHS):
        if pool == "last":  # position T-1, a padding token when the row is padded (the book)
            rows.append(norm(top[b, WIDTH - 1]))
        elif pool == "last_token":  # the row's last real token
            rows.append(norm(top[b, n - 1]))
        elif pool == "first":
            rows.append(norm(top[b, 0]))
        elif pool == "mean":  # the mean of the normalised real positions only
            rows.append(torch.stack([norm(top[b, t]) for t in range(n)]).mean(dim=0))
        else:
            raise AssertionError(f"no expectation for pool {pool!r}")
    return torch.stack(rows)


@pytest.mark.parametrize("pool", POOLS)
def test_pooled_vector_is_the_expected_row(pool: str) -> None:
    """No blocks above `start`: pooled() is the final LayerNorm of the pooled position(s) of x itself."""
    gpt, x = tiny_gpt(), hidden_states()
    lengths = torch.tensor(LENGTHS)
    with torch.no_grad():
        for one_position_top in (True, False):
            pooled = gpt.pooled(x, lengths, pool, start=TINY["n_layers"], one_position_top=one_position_top)
            torch.testing.assert_close(pooled, expected_rows(gpt.final_norm, x, pool), rtol=0, atol=1e-6)


@pytest.mark.parametrize("one_position_top", [True, False])
@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("pool", POOLS)
def test_pooled_vector_after_the_blocks(pool: str, start: int, one_position_top: bool) -> None:
    """With blocks to run, the pooled row is that of the full (every-position) forward of blocks start..,
    whether the top block computes every position or only the pooled one."""
    gpt, x = tiny_gpt(), hidden_states()
    with torch.no_grad():
        top = x
        for block in gpt.trf_blocks[start:]:
            top = block(top)
        expected = expected_rows(gpt.final_norm, top, pool)
        pooled = gpt.pooled(x, torch.tensor(LENGTHS), pool, start=start, one_position_top=one_position_top)
    torch.testing.assert_close(pooled, expected, **TOLERANCE)


def classifier(pool: str, **kwargs: Any) -> SpamClassifier:
    torch.manual_seed(0)
    return SpamClassifier.from_options(arch=TINY, pretrained=None, pool=pool, trainable_layers="last_block", **kwargs)


def padded(rows: list[list[int]], width: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([r + [PAD_TOKEN_ID] * (width - len(r)) for r in rows]),
        "lengths": torch.tensor([len(r) for r in rows]),
    }


TEXTS = [[464, 3290, 318, 4950, 13], [40, 1101], [7, 8, 9, 10, 11, 12, 13, 14, 15], [318]]  # token ids


def test_last_token_of_padded_text_is_last_of_the_unpadded_text() -> None:
    """pool=last_token reads the row's last real token: the position pool=last reads when there is no padding."""
    last_token = classifier("last_token").eval()
    last = classifier("last").eval()
    last.load_state_dict(last_token.state_dict())
    with torch.no_grad():
        batch = last_token(**padded(TEXTS, 12))
        for i, ids in enumerate(TEXTS):
            alone = last(torch.tensor([ids]))
            torch.testing.assert_close(batch[i : i + 1], alone, **TOLERANCE)
        # and pool=last on the padded batch reads a padding position: another vector for every padded row
        assert not torch.allclose(last(**padded(TEXTS, 12)), batch, atol=1e-4)


def test_first_and_mean_of_padded_text_are_those_of_the_unpadded_text() -> None:
    models = {pool: classifier(pool).eval() for pool in ("first", "mean")}
    with torch.no_grad():
        for model in models.values():
            batch = model(**padded(TEXTS, 12))
            for i, ids in enumerate(TEXTS):
                torch.testing.assert_close(batch[i : i + 1], model(**padded([ids], len(ids))), **TOLERANCE)


# --- the training path reads what the evaluation path reads -----------------------------------------


class EvalLogits(Callback):
    """Before every training batch: forward() of that batch in eval mode, with the weights the step will use."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *args: Any) -> None:
        module.eval()
        with torch.no_grad():
            self.logits.append(module(batch["input_ids"], batch["lengths"]))
        module.train()


def batches() -> list[dict[str, torch.Tensor]]:
    """Three batches padded to one width (as with the book's padding), rows of every length kind."""
    torch.manual_seed(2)
    out = []
    for lengths in ([12, 3, 1, 7], [5, 12, 2, 9], [1, 1, 12, 6]):
        rows = [torch.randint(0, 50256, (n,)).tolist() for n in lengths]
        out.append({**padded(rows, 12), "labels": torch.tensor([0, 1, 1, 0])})
    return out


@pytest.mark.parametrize("cache", [False, True], ids=["no_cache", "cache"])
@pytest.mark.parametrize("pool", POOLS)
def test_training_loss_uses_the_eval_logits(pool: str, cache: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With dropout 0 the logits cross_entropy gets in training_step (and validation_step) are forward()'s
    in eval mode: training optimises the position(s) that prediction and evaluation read."""
    model = classifier(pool, cache_frozen=cache, lr=1e-2)
    assert (model.feature_cache is not None) == cache
    seen: list[torch.Tensor] = []
    real_cross_entropy = F.cross_entropy

    def spy(logits: torch.Tensor, labels: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(logits.detach().clone())
        return real_cross_entropy(logits, labels, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    data = batches()
    reference = EvalLogits()
    trainer = quiet_trainer(max_epochs=2, callbacks=[reference], use_distributed_sampler=False)
    trainer.fit(model, DataLoader(data, batch_size=None))
    assert len(seen) == len(reference.logits) == 2 * len(data)
    for step, (loss_logits, eval_logits) in enumerate(zip(seen, reference.logits, strict=True)):
        torch.testing.assert_close(loss_logits, eval_logits, **TOLERANCE, msg=lambda m, s=step: f"step {s}: {m}")
    assert not torch.allclose(reference.logits[0], reference.logits[-1]), "the weights did not change"

    seen.clear()
    trainer.validate(model, DataLoader(data, batch_size=None), verbose=False)
    model.eval()
    with torch.no_grad():
        expected = [model(b["input_ids"], b["lengths"]) for b in data]
    assert len(seen) == len(data)
    for val_logits, eval_logits in zip(seen, expected, strict=True):
        torch.testing.assert_close(val_logits, eval_logits, **TOLERANCE)
