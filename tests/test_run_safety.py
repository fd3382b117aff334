"""Training runs that must not end with wrong results or a misleading exit status (issue "Reliability II"): signals,
resumes with changed settings, configurations that train nothing, run names outside runs_dir, stale temporary
files, and the precision that actually ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers.scripts import run_script
from helpers.smoke import smoke_cfg, train_cli
from omegaconf import OmegaConf

from spam_lightning.checkpoint import read_checkpoint
from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.rundir import check_run_name
from spam_lightning.train import run


@pytest.fixture
def cfg_factory(tmp_path: Path, sms_zip: Path, tokenizer_file: str):
    def factory(*overrides: str):
        return smoke_cfg(
            tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, "test_after_fit=false", *overrides
        )

    return factory


# -- configurations that would train nothing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=2000", "data.batch_size=2000 with data.drop_last=True gives no training batch from the 1045"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
        ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 trains nothing"),
    ],
)
def test_a_run_that_would_train_nothing_is_refused(cfg_factory, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(cfg_factory(override))
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run wrote anything


# -- resuming with changed settings -------------------------------------------------------------------------------


def test_resume_with_changed_settings_is_refused_listing_them(cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2"))
    checkpoints = tmp_path / "run" / "checkpoints"
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()
    stale = checkpoints / ".last.ckpt.abc123.tmp"  # what a kill -9 during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")

    changed = ("model.lr=5e-4", "data.batch_size=8", "model.weight_decay=0.0")
    with pytest.raises(ConfigError) as refused:
        run(cfg_factory("resume=true", "trainer.max_epochs=2", *changed))
    message = str(refused.value)
    for difference in (
        "model.lr=0.001 (this run: 0.0005)",
        "model.weight_decay=0.01 (this run: 0.0)",
        "data.batch_size=16 (this run: 8)",
    ):
        assert difference in message
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before  # nothing of the run changed
    assert stale.exists()

    # Settings that may change on resume apply: train one more epoch, evaluate with another batch size.
    run(cfg_factory("resume=true", "trainer.max_epochs=2", "trainer.limit_train_batches=5", "data.eval_batch_size=7"))
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 1
    assert not stale.exists()  # the interrupted write's temporary file is cleaned at start
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["eval_batch_size"] == 7


# -- signals: interrupted is never success ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("killer", "status"),
    [
        (["+callbacks.killer._target_=killers.SignalAtStep", "+callbacks.killer.step=3"], 143),
        (
            [
                "+callbacks.killer._target_=killers.SignalAtStep",
                "+callbacks.killer.step=3",
                "+callbacks.killer.signal=SIGINT",
            ],
            130,
        ),
        (["+callbacks.killer._target_=killers.SignalInTest", "test_after_fit=true"], 143),
    ],
    ids=["SIGTERM in training", "Ctrl-C in training", "SIGTERM in the test phase"],
)
def test_an_interrupted_run_exits_non_zero_with_the_resume_hint(
    killer: list[str], status: int, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    done = train_cli(
        tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=10", *killer, sms_zip=sms_zip,
        tokenizer_file=tokenizer_file,
    )  # fmt: skip
    assert done.returncode == status, done.stderr[-3000:]
    assert "continue with: python train.py resume=true run_name=r" in done.stdout + done.stderr
    assert not (tmp_path / "runs" / "r" / "metrics.json").exists()


# -- run names -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute_run", "a/../../b", " "])
def test_run_name_outside_runs_dir_is_refused(name: str) -> None:
    with pytest.raises(SystemExit) as refused:
        check_run_name(OmegaConf.create({"run_name": name}))
    assert str(refused.value).startswith(f"error: run_name={name!r} must be a folder name under runs_dir")
    check_run_name(OmegaConf.create({"run_name": "sweeps/lr_1e-4"}))  # a nested name inside runs_dir is fine


def test_run_name_refusal_writes_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "deep" / "runs"
    done = run_script("train.py", "experiment=smoke", f"runs_dir={runs}", "run_name=../../escaped")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: run_name='../../escaped' must be a folder name")
    assert not any(tmp_path.rglob("*.yaml")) and not (tmp_path / "escaped").exists()


# -- the precision that ran is the one recorded --------------------------------------------------------------------


def test_config_records_the_precision_that_ran(cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.precision=16-mixed", "trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"  # Lightning runs fp16 AMP as bf16 on a CPU


# -- unreadable checkpoints say what they are ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty (0 bytes): not a checkpoint"),
        (b"\x80\x02garbage" + bytes(range(256)) * 4, "not a checkpoint"),
        (b"PK\x03\x04 a broken zip", "cannot be read (truncated or not a checkpoint?)"),
    ],
    ids=["empty", "random bytes", "broken zip"],
)
def test_an_unreadable_checkpoint_says_what_it_is(content: bytes, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        read_checkpoint(bad)
    assert "pickled objects" not in str(refused.value) and "\n" not in str(refused.value)
