"""A checkpoint's record is bound to it (issue 28 item 3): record_sha256 covers every field of the `spam_lightning`
record that changes predictions (format, net, preprocessing, frozen_weights, lora) and every tensor of its state_dict,
so that a field or a tensor edited alone is refused, in one line naming the file, by the one reader (read_record:
prediction, evaluation, export, and training's resume). `data` is provenance (checkpoint.UNBOUND says why): an edited
one loads and predicts identically. Format-2 checkpoints (before record_sha256) are still read.

The checkpoint: a 3-step smoke run with LoRA adapters on a seeded random trunk, so that its record has every kind of
field (frozen_weights and lora are mappings, not null)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.records import edited, leaves
from helpers.smoke import smoke_cfg, train_smoke

from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.errors import CheckpointError
from spam_lightning.inference.checkpoint import RECORD_KEY, UNBOUND, load_trained, record_sha256
from spam_lightning.inference.predictor import Predictor
from spam_lightning.training.run import run as train_run

TEXTS = ["Free entry! Text WIN to 80086 now to claim", "See you at 6", "URGENT call now"]
RUN = (
    "model.finetune=lora",
    "model.lora.rank=2",
    "model.init_seed=5",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "report=false",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ckpt_trust")
    best = Path(train_smoke(tmp, sms_zip, tokenizer_file, *RUN)["best_checkpoint"])
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    probabilities = probabilities_of(best, tokenizer_file)
    return {"tmp": tmp, "best": best, "ckpt": ckpt, "probabilities": probabilities}


def probabilities_of(path: Path, tokenizer_file: str) -> list[list[float] | None]:
    return Predictor(load_trained(path), get_tokenizer(tokenizer_file), "cpu").class_probabilities(TEXTS)[0]


def saved(ckpt: dict[str, Any], path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as refused:
        load_trained(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_the_record_has_every_kind_of_field(run: dict[str, Any]) -> None:
    record = run["ckpt"][RECORD_KEY]
    assert record["format"] == 3 and record["lora"]["rank"] == 2 and record["frozen_weights"]["init_seed"] == 5
    assert record["record_sha256"] == record_sha256(record, run["ckpt"]["state_dict"])
    assert record["data"]["splits_sha256"] and record["preprocessing"]["labels"] == ["ham", "spam"]


def test_every_field_is_bound_but_the_data_provenance(run: dict[str, Any], tokenizer_file: str, tmp_path: Path) -> None:
    """Each value of the record edited alone (every leaf, so a field added later is covered too) and saved as an editor
    would (torch.save, no new hash): refused naming the file, unless it is under `data` (UNBOUND): that loads and
    predicts identically."""
    record = run["ckpt"][RECORD_KEY]
    accepted, refused = [], []
    for number, field in enumerate(leaves(record)):
        ckpt = {**run["ckpt"], RECORD_KEY: edited(record, field)}
        path = saved(ckpt, tmp_path / f"{number}.ckpt")
        name = ".".join(field)
        try:
            probabilities = probabilities_of(path, tokenizer_file)
        except CheckpointError as err:
            assert "\n" not in str(err) and str(path) in str(err), (name, str(err))
            refused.append(name)
            continue
        assert probabilities == run["probabilities"], name
        accepted.append(name)
    assert UNBOUND == ("record_sha256", "data")
    assert accepted and all(name.startswith("data.") for name in accepted)
    assert not [name for name in refused if name.startswith("data.")]
    expected = {
        "format", "record_sha256", "net.pool", "net.num_classes", "net.arch.n_layers", "net.arch.qkv_bias",
        "preprocessing.max_length", "preprocessing.padding", "preprocessing.labels", "preprocessing.positive_class",
        "frozen_weights.init_seed", "frozen_weights.sha256", "lora.rank", "lora.alpha", "lora.dropout", "lora.targets",
    }  # fmt: skip
    assert expected <= set(refused), expected - set(refused)


def test_a_value_edit_is_refused_as_an_edit(run: dict[str, Any], tmp_path: Path) -> None:
    """The issue's case: max_length 128 -> 64 (a valid value, which loaded and predicted otherwise before)."""
    ckpt = copy.deepcopy(run["ckpt"])
    ckpt[RECORD_KEY]["preprocessing"]["max_length"] = 64
    message = refusal(saved(ckpt, tmp_path / "edited.ckpt"))
    assert "do not match its record_sha256: the checkpoint was edited after training" in message


def test_every_tensor_is_bound(run: dict[str, Any], tmp_path: Path) -> None:
    state = run["ckpt"]["state_dict"]
    assert any(key.endswith("lora_A") for key in state) and "net.gpt.out_head.weight" in state
    for number, key in enumerate(sorted(state)):
        changed = state[key].clone()
        changed.view(-1)[0] += 0.5
        path = saved({**run["ckpt"], "state_dict": {**state, key: changed}}, tmp_path / f"{number}.ckpt")
        assert "record_sha256" in refusal(path), key
    path = saved({**run["ckpt"], "state_dict": {**state, "net.extra": torch.zeros(1)}}, tmp_path / "extra.ckpt")
    assert "record_sha256" in refusal(path)


def test_a_format_2_checkpoint_is_still_read_and_a_format_3_one_needs_its_hash(
    run: dict[str, Any], tokenizer_file: str, tmp_path: Path
) -> None:
    ckpt = copy.deepcopy(run["ckpt"])
    ckpt[RECORD_KEY].pop("record_sha256")
    assert "record_sha256 is missing" in refusal(saved(ckpt, tmp_path / "unhashed.ckpt"))
    ckpt[RECORD_KEY]["format"] = 2  # as the previous version wrote it
    assert probabilities_of(saved(ckpt, tmp_path / "format2.ckpt"), tokenizer_file) == run["probabilities"]
    ckpt[RECORD_KEY]["format"] = 4
    assert "checkpoint format 4, expected 2 or 3" in refusal(saved(ckpt, tmp_path / "format4.ckpt"))


def test_training_refuses_to_continue_from_an_edited_checkpoint(
    run: dict[str, Any], sms_zip: Path, tokenizer_file: str, tmp_path: Path
) -> None:
    last = torch.load(run["tmp"] / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    last[RECORD_KEY]["lora"]["alpha"] = 2 * last[RECORD_KEY]["lora"]["alpha"]
    edited_last = saved(last, tmp_path / "last.ckpt")
    cfg = smoke_cfg(tmp_path / "run", run["tmp"] / "data", sms_zip, tokenizer_file, *RUN, f"ckpt_path={edited_last}")
    with pytest.raises(CheckpointError, match="do not match its record_sha256"):
        train_run(cfg)
