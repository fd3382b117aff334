"""The package as users install and import it: public names, the wheel's configs and console scripts, commands from
any directory, --help, and lightning-hydra-template's conventions (debug group, early stopping, config tree)."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers.smoke import REPO, smoke_cfg
from helpers.user_machine import copy_checkout

import spam_lightning
from spam_lightning import paths
from spam_lightning.training.run import run as train_run

CONFIGS = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))


def test_public_names_and_version() -> None:
    assert spam_lightning.__version__ == version("spam_lightning")
    for name in spam_lightning.__all__:
        assert getattr(spam_lightning, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'train_model'"):
        _ = spam_lightning.train_model  # type: ignore[attr-defined]  # the message names what was asked for
    # Importing the package alone stays cheap: the names are loaded when used.
    probe = "import sys, spam_lightning; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pip_install_of_the_project_adds_no_torch_build(tmp_path: Path) -> None:
    """With the Makefile's torch installed first, `pip install .` resolves every requirement to what is there: it
    installs the project only, never a second (CUDA) torch."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet", "--report",
         str(report), str(REPO)],
        check=True,
    )  # fmt: skip
    assert [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]] == ["spam_lightning"]


@pytest.mark.slow  # ~35 s: builds and installs the wheel, trains, predicts (CI runs it)
def test_wheel_carries_every_config_and_its_commands_run_anywhere(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """A built wheel installed outside the checkout: its commands find the packaged configs, and the current
    directory is the project (runs/ and data/ go there)."""
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    copy_checkout(REPO, source)  # what a clone holds: building writes build/ into the source folder
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(source)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("spam_lightning-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)  # fmt: skip
    packaged = site / "spam_lightning" / "conf"
    assert sorted(str(p.relative_to(packaged)) for p in packaged.rglob("*.yaml")) == CONFIGS

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != paths.ROOT_ENV}
    env |= {"PYTHONPATH": str(site), "SPAM_LIGHTNING_CACHE": str(tmp_path / "cache")}
    where = "import spam_lightning.paths as p; print(p.__file__); print(p.config_dir()); print(p.project_dir())"
    out = subprocess.run([sys.executable, "-c", where], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(site / "spam_lightning" / "paths.py"), str(packaged), str(work)]

    data = [f"data.source={sms_zip}", f"data.tokenizer_file={tokenizer_file}"]
    train = subprocess.run(
        [str(site / "bin" / "spam-train"), "experiment=smoke", "debug=limit", "trainer.max_epochs=1", "run_name=wheel",
         *data],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = work / "runs" / "debug" / "wheel"
    assert (run_dir / "metrics.json").is_file() and (work / "data" / "sms_spam" / "seed-123").is_dir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    predict = subprocess.run(
        [str(site / "bin" / "spam-predict"), f"ckpt_path={ckpt}", 'text="Free entry! Win a prize"', "format=jsonl"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert json.loads(predict.stdout)["label"] in ("ham", "spam")


def test_the_checkout_scripts_write_into_the_project_not_the_current_directory(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    elsewhere, project = tmp_path / "elsewhere", tmp_path / "project"
    elsewhere.mkdir()
    env = {**os.environ, paths.ROOT_ENV: str(project), "SPAM_LIGHTNING_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(REPO / "train.py"), "experiment=smoke", "debug=fdr", "run_name=far"]
    command += [f"data.source={sms_zip}", f"data.tokenizer_file={tokenizer_file}"]
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "runs" / "debug" / "far" / "metrics.json").is_file()
    assert (project / "data" / "sms_spam" / "seed-123" / "splits.json").is_file()
    assert list(elsewhere.iterdir()) == []  # nothing in the current directory


def test_project_dir_is_the_running_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py")])
    assert paths.project_dir() == REPO and paths.config_dir() == REPO / "conf"
    copy = tmp_path / "copy"  # a second checkout (e.g. a clone using this venv): its own script, its own folders
    (copy / "conf").mkdir(parents=True)
    (copy / "conf" / "train.yaml").write_text("{}\n")
    monkeypatch.setattr(sys, "argv", [str(copy / "train.py")])
    assert paths.project_dir() == copy and paths.config_dir() == copy / "conf"
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/spam-train"])  # a console script: the checkout of the package
    assert paths.project_dir() == REPO
    monkeypatch.setattr(paths, "CHECKOUT", tmp_path / "site-packages")  # installed from a wheel: the current dir
    assert paths.project_dir() == tmp_path and paths.config_dir() == paths.PACKAGED_CONF
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path / "mine"))
    assert paths.project_dir() == tmp_path / "mine"


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "serve"])
def test_help_lists_the_commands_own_options(command: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / f"{command}.py"), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(f"python {command}.py [key=value ...]")
    assert "\nckpt_path: null " in done.stdout
    assert "Lightning checkpoint" in done.stdout  # the options with their comments
    for training_only in ("Configuration groups", "trainer", "hparams_search", "defaults:"):
        assert training_only not in done.stdout


def test_train_help_lists_the_groups() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "debug: default, fdr, limit, overfit, profiler" in done.stdout
    assert "callbacks: default, early_stopping, none" in done.stdout


def _val_epochs(run_dir: Path) -> list[int]:
    with (run_dir / "logs" / "metrics.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/loss")]


def _train_losses(run_dir: Path) -> list[float]:
    with (run_dir / "logs" / "metrics.csv").open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.parametrize(
    ("debug", "extra"), [("fdr", ""), ("limit", ""), ("profiler", ""), ("limit", "callbacks=none")]
)
def test_debug_configs(
    debug: str,
    extra: str,
    tmp_path: Path,
    sms_zip: Path,
    tokenizer_file: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = tmp_path / "run"
    shorter = ["trainer.limit_train_batches=5"] if debug == "profiler" else []
    cfg = smoke_cfg(run_dir, tmp_path / "data", sms_zip, tokenizer_file, f"debug={debug}", *shorter, *extra.split())
    assert cfg.runs_dir.endswith("/runs/debug") and not cfg.logger and cfg.trainer.detect_anomaly
    with caplog.at_level(logging.INFO):
        metrics = train_run(cfg)
    assert "├── data" in caplog.text and "└── top level" in caplog.text  # the config tree, printed at start
    assert set(metrics) >= {"train", "validation", "test"}
    assert list(cwd.iterdir()) == []  # even Lightning's own checkpoint (callbacks=none) goes into the run
    checkpoints = {p.name for p in run_dir.glob("checkpoints/*.ckpt")}
    if debug == "fdr":
        assert checkpoints == set()  # fast_dev_run writes none
    elif extra == "callbacks=none":
        assert checkpoints == {"epoch=2-step=15.ckpt"}
    else:
        assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # the best and the last
    if debug == "profiler":
        assert "FIT Profiler Report" in (run_dir / "fit-profile.txt").read_text()


def test_debug_overfit_drives_the_training_loss_down(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    run_dir = tmp_path / "run"
    cfg = smoke_cfg(run_dir, tmp_path / "data", sms_zip, tokenizer_file, "debug=overfit", "trainer.max_epochs=8",
                    "logger=csv")  # fmt: skip
    train_run(cfg)
    losses = _train_losses(run_dir)
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]


def test_early_stopping(tmp_path: Path, sms_zip: Path, tokenizer_file: str, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    stop_at_once = ["callbacks.early_stopping.min_delta=100", "callbacks.early_stopping.patience=1"]
    cfg = smoke_cfg(
        run_dir, tmp_path / "data", sms_zip, tokenizer_file, "callbacks=early_stopping", *stop_at_once,
        "trainer.max_epochs=5", "trainer.limit_train_batches=5", "test_after_fit=false",
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        train_run(cfg)
    assert _val_epochs(run_dir) == [0, 1]  # no improvement of 100 after the first epoch: stopped after the second
    assert "Signaling Trainer to stop" in caplog.text
