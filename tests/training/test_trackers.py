"""Trackers as logger config groups: MLflow (SQLite) and W&B (offline) run for real on smoke runs and are read back;
combinations, logger=none/null, resume continuing the tracker runs, and a tracker failing without costing the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.smoke import REPO, compose_cfg
from helpers.wandb_offline import offline_runs
from mlflow.tracking import MlflowClient

from spam_lightning.errors import ConfigError
from spam_lightning.inference.report import read_epoch_metrics
from spam_lightning.training.run import run
from spam_lightning.training.trackers import (
    MLflowLogger,
    _absolute_sqlite,
    check_tags,
    finish_trackers,
    flat_config,
    log_run_files,
    tracker_run_name,
)

SPLITS = {"train": "eval_train", "validation": "eval_validation", "test": "test"}  # metrics.json -> logged prefix
METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "loss")
PLOTS = {"loss.png", "accuracy.png", "confusion_matrix.png", "pr_curve.png"}


@pytest.fixture(autouse=True)
def _wandb_offline_and_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B never reaches the network nor asks for a login; its own folders are temporary."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def smoke(tmp: Path, sms_zip: Path, tokenizer_file: str, *overrides: str) -> Any:
    """experiment=smoke, one short epoch (8 training batches, 2 of each evaluation), into tmp/runs/r."""
    return compose_cfg(
        "train",
        "experiment=smoke",
        f"runs_dir={tmp / 'runs'}",
        "run_name=r",
        f"run_dir={tmp / 'runs' / 'r'}",
        f"data.source={sms_zip}",
        f"data.tokenizer_file={tokenizer_file}",
        f"data.data_dir={tmp / 'data'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *overrides,
    )


def mlflow_run(run_dir: Path) -> tuple[MlflowClient, Any]:
    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(ids["tracking_uri"])
    return client, client.get_run(ids["run_id"])


def check_mlflow(run_dir: Path, metrics: dict[str, Any]) -> Any:
    client, mlrun = mlflow_run(run_dir)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "r"
    logged = mlrun.data.metrics
    for split, prefix in SPLITS.items():
        for name in METRICS:
            assert logged[f"{prefix}/{name}"] == pytest.approx(metrics[split][name], abs=1e-6), (split, name)
    csv_log = read_epoch_metrics(run_dir / "logs" / "metrics.csv")
    for key in ("val/accuracy", "val/loss", "train/loss"):
        history = [m.value for m in sorted(client.get_metric_history(mlrun.info.run_id, key), key=lambda m: m.step)]
        assert history == pytest.approx([csv_log[key][epoch] for epoch in sorted(csv_log[key])], abs=1e-6), key
    params = mlrun.data.params
    assert params["model.lr"] == "0.001" and params["data.seed"] == "123" and params["seed"] == "123"
    assert params["trainer.max_epochs"] == str(metrics["epochs"]) or "resume" in params
    assert params["num_trainable_parameters"] == str(metrics["parameters"]["trainable"])  # still logged
    assert params["logger.mlflow.tracking_uri"].startswith("sqlite:////")  # absolute
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert artifacts >= {"metrics.json", "config.yaml"} | PLOTS, artifacts
    local = Path(client.download_artifacts(mlrun.info.run_id, "metrics.json", str(run_dir.parent / "download")))
    assert json.loads(local.read_text()) == json.loads((run_dir / "metrics.json").read_text())
    assert mlrun.info.artifact_uri.startswith((run_dir.parent / "mlartifacts").as_uri())  # inside runs_dir
    return mlrun


def check_wandb(run_dir: Path, metrics: dict[str, Any]) -> Any:
    *_, wrun = offline_runs(run_dir)
    assert wrun.exited and wrun.name == "r" and wrun.project == "spam_lightning"
    for split, prefix in SPLITS.items():
        for name in METRICS:
            assert wrun.summary[f"{prefix}/{name}"] == pytest.approx(metrics[split][name], abs=1e-6), (split, name)
    csv_log = read_epoch_metrics(run_dir / "logs" / "metrics.csv")
    assert wrun.summary["val/accuracy"] == pytest.approx(csv_log["val/accuracy"][max(csv_log["val/accuracy"])])
    assert wrun.config["model.lr"] == 0.001 and wrun.config["data.seed"] == 123 and wrun.config["seed"] == 123
    assert wrun.config["num_trainable_parameters"] == metrics["parameters"]["trainable"]
    assert set(wrun.files) >= {"metrics.json", "spam_lightning_config.yaml"} | PLOTS
    saved = wrun.folder / "files" / "metrics.json"  # a copy: the offline run stays whole if the run folder moves
    assert not saved.is_symlink() and saved.read_bytes() == (run_dir / "metrics.json").read_bytes()
    # Our config.yaml under its own name: files/config.yaml is W&B's run config (made from the run's config records,
    # read above as wrun.config; offline, `wandb sync` writes it), never replaced by ours.
    ours = wrun.folder / "files" / "spam_lightning_config.yaml"
    assert ours.read_bytes() == (run_dir / "config.yaml").read_bytes()
    from wandb.sdk.lib.filenames import CONFIG_FNAME  # W&B's own name for it

    assert CONFIG_FNAME not in wrun.files and not (wrun.folder / "files" / CONFIG_FNAME).exists()
    return wrun


def test_mlflow_run_is_logged_and_reads_back(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    # With the run's tags and another optimizer (model.optimizer, a _partial_ node): both recorded.
    sgd = ("model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9")
    metrics = run(smoke(tmp_path, sms_zip, tokenizer_file, "logger=mlflow", "tags=[dev,lr-scan]", *sgd))
    run_dir = tmp_path / "runs" / "r"
    mlrun = check_mlflow(run_dir, metrics)
    assert {"dev": "", "lr-scan": ""}.items() <= mlrun.data.tags.items()  # MLflow run tags...
    assert "tags" not in mlrun.data.params  # ...not a parameter
    assert metrics["tags"] == ["dev", "lr-scan"] == json.loads((run_dir / "metrics.json").read_text())["tags"]
    assert mlrun.data.params["model.optimizer._target_"] == "torch.optim.SGD"
    assert mlrun.data.params["model.optimizer.momentum"] == "0.9" and metrics["global_step"] == 8
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["hyper_parameters"]["optimizer"] == "torch.optim.SGD"
    assert (tmp_path / "runs" / "mlflow.db").is_file() and not (run_dir / "wandb").exists()
    assert (run_dir / "logs" / "metrics.csv").is_file()  # the CSV log stays: the plots are drawn from it
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["logger"]["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def test_wandb_offline_run_is_logged_and_reads_back(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    metrics = run(smoke(tmp_path, sms_zip, tokenizer_file, "logger=wandb"))
    run_dir = tmp_path / "runs" / "r"
    wrun = check_wandb(run_dir, metrics)
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"] == wrun.run_id
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_a_combination_logs_to_both_and_resume_continues_their_runs(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "runs" / "r"
    first = run(smoke(tmp_path, sms_zip, tokenizer_file, "logger=many", "tags=[dev]"))
    first_mlflow, first_wandb = check_mlflow(run_dir, first), check_wandb(run_dir, first)
    assert first_wandb.tags == ["dev"] and "dev" in first_mlflow.data.tags and "tags" not in first_wandb.config

    with caplog.at_level(logging.WARNING, logger="spam_lightning"):  # the list syntax, as on the command line
        resumed = ("logger=[mlflow,wandb]", "resume=true", "trainer.max_epochs=2", "tags=[dev,resumed]")
        second = run(smoke(tmp_path, sms_zip, tokenizer_file, *resumed))
    assert second["epochs"] == 2
    mlrun, wrun = check_mlflow(run_dir, second), check_wandb(run_dir, second)
    assert mlrun.info.run_id == first_mlflow.info.run_id  # the same MLflow run, two epochs in its history
    assert mlrun.data.params["trainer.max_epochs"] == "1" and mlrun.data.params["resume"] == "False"
    assert "MLflow keeps a parameter's first value" in caplog.text
    assert "trainer.max_epochs=1 (this session: 2)" in caplog.text
    assert wrun.run_id == first_wandb.run_id and len(offline_runs(run_dir)) == 2  # offline: one folder per session
    assert wrun.tags == ["dev", "resumed"] and {"dev", "resumed"} <= set(mlrun.data.tags)  # a session's tags join
    assert len(MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").search_runs(["1"])) == 1


def test_logger_none_trains_without_logs(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    metrics = run(smoke(tmp_path, sms_zip, tokenizer_file, "logger=none", "trainer.limit_train_batches=2"))
    run_dir = tmp_path / "runs" / "r"
    assert metrics["test"]["accuracy"] > 0 and (run_dir / "metrics.json").is_file()
    assert not any((run_dir / name).exists() for name in ("logs", "wandb", "trackers.json"))
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "loggers"),
    [
        ("logger=csv", {"csv"}),
        ("logger=mlflow", {"csv", "mlflow"}),
        ("logger=wandb", {"csv", "wandb"}),
        ("logger=many", {"csv", "mlflow", "wandb"}),
        ("logger=[csv,mlflow]", {"csv", "mlflow"}),
        ("logger=[mlflow,wandb]", {"csv", "mlflow", "wandb"}),
        ("logger=[csv,tensorboard,mlflow]", {"csv", "tensorboard", "mlflow"}),
        ("logger=none", set()),
    ],
)
def test_logger_groups_and_combinations_compose(override: str, loggers: set[str], tmp_path: Path) -> None:
    cfg = compose_cfg("train", override, f"run_dir={tmp_path / 'r'}", "run_name=r")
    assert set(cfg.logger or {}) == loggers
    if "wandb" in loggers:
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.name == "r"
    if "mlflow" in loggers:
        assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{REPO}/runs/mlflow.db"  # in the project's runs/


def test_flat_config_has_every_key_with_dots(tmp_path: Path) -> None:
    flat = flat_config(compose_cfg("train", "experiment=smoke", f"run_dir={tmp_path}"))
    assert flat["model.lr"] == 0.001 and flat["data.seed"] == 123 and flat["trainer.max_epochs"] == 3
    assert flat["seed"] == 123 and flat["callbacks.best_checkpoint.monitor"] == "val/accuracy"
    assert isinstance(flat["data.urls"], list)


def test_mlflow_limits_a_failing_upload_and_run_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    logger = MLflowLogger(
        run_dir=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "a")
    )
    assert not (tmp_path / "mlflow.db").exists()  # nothing is created before something is logged
    with caplog.at_level(logging.WARNING, logger="spam_lightning"):
        logger.log_hyperparams({"long": "x" * 7000, "k" * 300: 1, "nested": {"key": None}})
        logger.log_hyperparams({"nested.key": "changed"})
        logger.experiment.log_artifact = _refuse  # the tracker fails: a warning, the run's files stay
        log_run_files([logger], tmp_path)
    params = logger.experiment.get_run(logger.run_id).data.params
    assert len(params["long"]) == 6000 and params["long"].endswith("...[truncated]")
    assert params["nested.key"] == "None" and not any(key.startswith("kkk") for key in params)
    assert "cut to 6000 characters" in caplog.text and "longer than 250" in caplog.text
    assert "nested.key=None (this session: changed)" in caplog.text
    assert "could not log the run's files to MLflowLogger: OSError: no space" in caplog.text
    assert (tmp_path / "metrics.json").read_text() == "{}"
    for error, status in ((SystemExit(143), "KILLED"), (RuntimeError("bug"), "FAILED"), (None, "FINISHED")):
        finish_trackers([logger], error)
        assert logger.experiment.get_run(logger.run_id).info.status == status


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise OSError("no space")


def test_paths_and_names() -> None:
    assert _absolute_sqlite("sqlite:///runs/mlflow.db") == f"sqlite:///{Path('runs/mlflow.db').absolute()}"
    assert _absolute_sqlite("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert _absolute_sqlite("http://host:5000") == "http://host:5000"
    assert tracker_run_name("grid1", "runs/grid1/3") == "grid1/3"  # a sweep job
    assert tracker_run_name("book1", "runs/book1") == "book1"


def test_tags_are_a_list_of_names() -> None:
    assert check_tags(["dev", " lr-scan ", "dev"]) == ["dev", "lr-scan"] and check_tags(None) == []
    for bad in ("dev", ["dev", ""], ["x" * 65], [3]):
        with pytest.raises(ConfigError, match=r"^tags=.*: expected a list of names of 1 to 64 characters"):
            check_tags(bad)
