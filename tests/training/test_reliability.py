"""Crash safety, DDP metric correctness, and config errors that stop a run before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.smoke import final_weights, train_cli

from spam_lightning.inference.checkpoint import read_checkpoint as load_checkpoint
from spam_lightning.training.run import run

REPO = Path(__file__).resolve().parents[2]


LORA = ("model.finetune=lora", "model.lora.rank=4")  # the tiny model with rank-4 adapters on every Linear


def uninterrupted_run(tmp: Path, *extra: str, **kw: Any) -> dict:
    result = train_cli(tmp, "checkpoint_every_n_steps=10", *extra, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_weights(tmp)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict:
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted"), **kw)


@pytest.fixture(scope="module")
def uninterrupted_lora(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict:
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted_lora"), *LORA, **kw)


KILL_POINTS = {
    # name: overrides that make the run SIGKILL itself
    "mid_epoch_after_step_25": ["+callbacks.killer._target_=killers.KillAtStep", "+callbacks.killer.step=25"],
    "during_validation_epoch_0": ["+callbacks.killer._target_=killers.KillInValidation", "+callbacks.killer.epoch=0"],
    "during_checkpoint_write": [
        "+callbacks.killer._target_=killers.KillDuringCheckpointWrite",
        "+callbacks.killer.nth=9",  # 6 step saves + best + last at epoch end, then step 70
    ],
}


def kill_then_resume(point: str, uninterrupted: dict, tmp_path: Path, *extra: str, **kw: Any) -> None:
    killed = train_cli(tmp_path, "checkpoint_every_n_steps=10", *extra, *KILL_POINTS[point], **kw)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt"
    state = load_checkpoint(last)  # complete: loads without error
    assert 0 < state["global_step"] < 130
    leftovers = [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
    resumed = train_cli(tmp_path, "checkpoint_every_n_steps=10", *extra, "resume=true", **kw)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stderr + resumed.stdout
    weights = final_weights(tmp_path)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in uninterrupted)
    if point == "during_checkpoint_write":
        assert leftovers, "the half-written temporary file should be there"
        assert state["global_step"] == 65  # the previous complete one (end of epoch 1); step 70 died


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_9_then_resume_equals_uninterrupted(
    point: str, uninterrupted: dict, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    kill_then_resume(point, uninterrupted, tmp_path, sms_zip=sms_zip, tokenizer_file=tokenizer_file)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_with_lora(
    uninterrupted_lora: dict, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """The same with LoRA adapters (model.finetune=lora): adapters and their AdamW state resume exactly."""
    assert any(k.endswith("lora_A") for k in uninterrupted_lora)
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    kill_then_resume("mid_epoch_after_step_25", uninterrupted_lora, tmp_path, *LORA, **kw)


def test_kill_9_during_checkpoint_write_leaves_previous_checkpoint(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    killed = train_cli(
        tmp_path,
        "checkpoint_every_n_steps=10",
        "trainer.max_epochs=1",
        "+callbacks.killer._target_=killers.KillDuringCheckpointWrite",
        "+callbacks.killer.nth=3",
        sms_zip=sms_zip,
        tokenizer_file=tokenizer_file,
    )
    assert killed.returncode == -9
    state = load_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 20  # written before; the third write (step 30) died halfway


# -- DDP ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_metrics_equal_single_process(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    single = train_cli(tmp_path, "trainer.max_epochs=1", "test_after_fit=true", **kw)
    assert single.returncode == 0, single.stderr[-3000:]
    metrics_file = tmp_path / "runs" / "r" / "metrics.json"
    one = json.loads(metrics_file.read_text())
    shutil.copy(metrics_file, tmp_path / "single.json")
    # Same run, same best checkpoint, evaluated again by two processes (149 and 300 do not divide by 2).
    ddp = train_cli(
        tmp_path,
        "trainer.max_epochs=1",
        "test_after_fit=true",
        "resume=true",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        **kw,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    two = json.loads(metrics_file.read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for split in ("train", "validation", "test"):
        assert two[split]["confusion_matrix"] == one[split]["confusion_matrix"]
        for metric in ("accuracy", "precision", "recall", "f1", "auroc"):
            assert two[split][metric] == one[split][metric], (split, metric)
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], abs=1e-6)


# -- config errors: before any download or training ---------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lr=-1", "model.lr must be a number > 0"),
        ("model.lr=0", "model.lr must be a number > 0"),
        ("model.lr=inf", "model.lr must be a number > 0, got inf"),
        ("model.weight_decay=nan", "model.weight_decay must be a number >= 0, got nan"),
        ("model.trainable_layers=nope", "model.trainable_layers must be one of"),
        ("model.pool=nope", "model.pool must be one of"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("data.max_length=500", r"data.max_length must be in \[1, context_length=128\]"),
        ("trainer.accelerator=gpu", "gpu"),
        ("checkpoint_every_n_steps=0", "checkpoint_every_n_steps must be a positive integer"),
    ],
)
def test_config_errors_stop_before_any_download(override: str, message: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=smoke",
                f"run_dir={tmp_path / 'run'}",
                "data.source=http://127.0.0.1:9/never-downloaded.zip",
                f"data.data_dir={tmp_path / 'data'}",
                override,
            ],
        )
    with pytest.raises(Exception, match=message) as err:
        run(cfg)
    assert "download" not in str(err.value)
    assert not (tmp_path / "data").exists()
