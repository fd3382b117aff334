"""A CSVLogger that continues a resumed run's metrics.csv instead of deleting it.

Experiment trackers as Lightning loggers (conf/logger/mlflow.yaml, wandb.yaml): the run's whole resolved config
as parameters, its result files as artifacts, and a resumed run continuing its tracker runs.

- `MLflowLogger` / `WandbLogger`: Lightning's loggers, plus: the tracker's run id is kept in the run directory
  (`trackers.json`) and `resume=true` continues that run; MLflow's SQLite file and artifact folder are made absolute;
  the MLflow client (which creates and migrates the database) is only made when something is logged, so DDP worker
  ranks and runs that fail before they start never touch it; a parameter MLflow already holds with another value
  (a resumed run's `trainer.max_epochs`, `resume`) is kept and the new value is not logged, with a warning.
- `check_tags` and `tag_runs`: the run's top-level `tags` (`tags=[dev,lr-scan]`, as in lightning-hydra-template)
  become the tracker runs' tags (MLflow: a tag per name, with an empty value; W&B: its run tags), not parameters.
- `log_config` (at the start), `log_run_files` (after metrics.json and the plots) and `finish_trackers` (at the end,
  however the run ends) are what `spam_lightning.training.run.run` calls. A tracker that fails to log a file or to close
  its run warns; the run's results are never lost to it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from spam_lightning.errors import ConfigError, require_extra, show_value
from spam_lightning.files import atomic_write_bytes


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing metrics.csv; this one keeps its rows and appends."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        previous = path.read_bytes() if path.is_file() else b""
        experiment = super().experiment  # creates the writer, which removes metrics.csv
        if previous:
            path.write_bytes(previous)
            experiment.metrics_keys = next(csv.reader(previous.decode().splitlines()), [])
        return experiment


log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"  # in the run directory: {"mlflow": {...run_id}, "wandb": {...id}}
RUN_FILES = ("metrics.json", "config.yaml")  # logged as artifacts, with the run directory's *.png plots
# W&B keeps its own run config as files/config.yaml (written at the end of a run, shown by the web app and read by
# wandb.Api's run.config): ours goes beside it under another name rather than replacing it.
WANDB_NAMES = {"config.yaml": "spam_lightning_config.yaml"}
MLFLOW_KEY_LIMIT = 250  # MLflow's longest parameter key (mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH)
TRUNCATED = "...[truncated]"
TAG_LIMIT = 64  # W&B's longest tag (MLflow's: 250)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config with nested keys joined by dots: {'model.lr': 5e-05, 'data.seed': 123, 'seed': 123, ...}.
    Lists are kept as lists (MLflow writes them as text)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def check_tags(value: Any) -> list[str]:
    """The top-level `tags`: a list of names (null: none), each a non-empty string of at most TAG_LIMIT characters."""
    if value is None:
        return []
    names = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if names is None or not all(isinstance(n, str) and 0 < len(n.strip()) <= TAG_LIMIT for n in names):
        raise ConfigError(
            f"tags={show_value(value)}: expected a list of names of 1 to {TAG_LIMIT} characters, "
            "e.g. tags=[dev,lr-scan]"
        )
    return list(dict.fromkeys(n.strip() for n in names))


def tag_runs(loggers: Iterable[Logger], tags: Sequence[str]) -> None:
    """The run's tags as the tags of its MLflow and W&B runs (before they are created or continued)."""
    for logger in loggers:
        if isinstance(logger, (MLflowLogger, WandbLogger)):
            logger.add_tags(tags)


def log_config(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """The whole resolved config as parameters of every logger (the model's own hyper-parameters and parameter
    counts are logged by Lightning and the classifier at fit start, as before); `tags` are the runs' tags instead."""
    params = {key: value for key, value in flat_config(cfg).items() if key != "tags"}
    for logger in loggers:
        logger.log_hyperparams(params)


@rank_zero_only
def log_run_files(loggers: Iterable[Logger], run_dir: Path) -> None:
    """metrics.json, config.yaml and the plots as artifacts of each logger that keeps files (MLflow, W&B: config.yaml
    as spam_lightning_config.yaml)."""
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    files += sorted(run_dir.glob("*.png"))
    for logger in loggers:
        if not isinstance(logger, (_LightningMLFlowLogger, _LightningWandbLogger)):
            continue
        try:
            if isinstance(logger, _LightningMLFlowLogger):
                for path in files:
                    logger.experiment.log_artifact(logger.run_id, str(path))
            else:  # copied into the offline run's files/ (a symlink would break when the run folder moves)
                run = logger.experiment
                for path in files:
                    copy = Path(run.dir) / WANDB_NAMES.get(path.name, path.name)
                    shutil.copy2(path, copy)
                    run.save(str(copy), base_path=run.dir, policy="now")
        except Exception as err:  # the results are in the run directory already: a tracker's failure costs nothing
            log.warning("could not log the run's files to %s: %s: %s", type(logger).__name__, type(err).__name__, err)


@rank_zero_only
def finish_trackers(loggers: Iterable[Logger], error: BaseException | None) -> None:
    """Close the tracker runs this run started: finished, killed (Ctrl-C, SIGTERM: exit status 130, 143) or failed.
    W&B's run must be finished here, or the next run in this process (a sweep's next job) would log into it."""
    code = error.code if isinstance(error, SystemExit) else "error"
    if error is None or code in (0, None):
        status = "FINISHED"
    else:
        status = "KILLED" if code in (130, 143) or isinstance(error, KeyboardInterrupt) else "FAILED"
    for logger in loggers:
        try:
            if isinstance(logger, _LightningMLFlowLogger) and logger._initialized:
                logger.experiment.set_terminated(logger.run_id, status)
            elif isinstance(logger, _LightningWandbLogger) and logger._experiment is not None:
                logger._experiment.finish(exit_code=0 if status == "FINISHED" else 1)
                logger._experiment = None
        except Exception as err:
            log.warning("could not close the %s run: %s: %s", type(logger).__name__, type(err).__name__, err)


def read_ids(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / IDS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        log.warning("ignoring %s (%s): the trackers start new runs", path, err)
        return {}


def _save_ids(run_dir: Path, tracker: str, ids: dict[str, Any]) -> None:
    try:
        atomic_write_bytes(run_dir / IDS_FILE, json.dumps({**read_ids(run_dir), tracker: ids}, indent=2).encode())
    except OSError as err:
        log.warning(
            "could not record the %s run id in %s (%s): resume=true will start a new one", tracker, run_dir, err
        )


def tracker_run_name(run_name: str | None, run_dir: str | Path) -> str | None:
    """The run's name in the tracker: run_name, and a sweep job's number after it (runs/NAME/3 -> NAME/3)."""
    job = Path(run_dir)
    if run_name and job.name.isdigit() and job.parent.name == Path(run_name).name:
        return f"{run_name}/{job.name}"
    return run_name


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///relative/path.db (relative to the current directory) as an absolute sqlite:////... URI."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).absolute())
    return uri


class _DeferredClient:
    """Stands in for MlflowClient until the logger's experiment is first used (see MLflowLogger.experiment)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri


class MLflowLogger(_LightningMLFlowLogger):
    """Lightning's MLFlowLogger for a run directory: `continue_run` (resume=true) continues the MLflow run recorded in
    its trackers.json; parameters keep their first value (MLflow refuses a change)."""

    def __init__(
        self,
        *,
        run_dir: str,
        continue_run: bool = False,
        tracking_uri: str,
        artifact_location: str | None = None,
        run_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        require_extra("logger=mlflow", "mlflow", "mlflow")
        tracking_uri = _absolute_sqlite(tracking_uri)
        if artifact_location and "://" not in artifact_location:
            artifact_location = Path(artifact_location).absolute().as_uri()
        saved = read_ids(run_dir).get("mlflow", {}) if continue_run else {}
        run_id = kwargs.pop("run_id", None)
        if saved.get("run_id") and not run_id:
            if saved.get("tracking_uri") == tracking_uri:
                run_id = saved["run_id"]
            else:
                log.info(
                    "MLflow: this run's MLflow run is in %s, not %s: starting a new one",
                    saved.get("tracking_uri"),
                    tracking_uri,
                )
        with mock.patch("mlflow.tracking.MlflowClient", _DeferredClient):  # Lightning makes its client in __init__
            super().__init__(
                tracking_uri=tracking_uri,
                artifact_location=artifact_location,
                run_name=tracker_run_name(run_name, run_dir),
                run_id=run_id,
                **kwargs,
            )
        self._run_dir = Path(run_dir)
        self._logged_params: dict[str, str] = {}

    def add_tags(self, names: Sequence[str]) -> None:
        """MLflow tags are key-value pairs: each name is a tag with an empty value (`tags.dev = ''` in a search)."""
        self.tags = {**(self.tags or {}), **dict.fromkeys(names, "")}

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        from mlflow.tracking import MlflowClient

        self._mlflow_client = MlflowClient(self._tracking_uri)
        continued = self._run_id
        if continued is not None:
            try:
                run = self._mlflow_client.get_run(continued)
                self._logged_params = dict(run.data.params)
                self._mlflow_client.update_run(continued, status="RUNNING")
                log.info("MLflow: continuing run %s", continued)
            except Exception as err:
                log.warning("MLflow: cannot continue run %s (%s): starting a new one", continued, err)
                self._run_id = None
        client = super().experiment
        if continued is not None and self._run_id == continued:  # Lightning sets tags only on a run it creates
            for key, value in (self.tags or {}).items():
                client.set_tag(continued, key, value)
        _save_ids(self._run_dir, "mlflow", {"tracking_uri": self._tracking_uri, "run_id": self._run_id})
        return client

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """As Lightning's, with MLflow's own value limit (6,000 characters in MLflow 3; Lightning cuts at 250), keys
        over MLflow's 250 characters skipped, and values it already holds kept: each with a warning."""
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as value_limit
        except ImportError:
            value_limit = 250
        params = dict(params) if isinstance(params, Mapping) else vars(params)
        client = self.experiment  # a continued run's parameters are read here, the first time
        batch, changed = [], []
        for key, raw in _flatten(params).items():
            value = str(raw)
            if len(key) > MLFLOW_KEY_LIMIT:
                log.warning(
                    "MLflow: parameter %s... not logged: its name is longer than %d", key[:60], MLFLOW_KEY_LIMIT
                )
                continue
            if len(value) > value_limit:
                log.warning("MLflow: parameter %s cut to %d characters (of %d)", key, value_limit, len(value))
                value = value[: value_limit - len(TRUNCATED)] + TRUNCATED
            if key in self._logged_params:
                if self._logged_params[key] != value:
                    changed.append(f"{key}={self._logged_params[key]} (this session: {value})")
                continue
            self._logged_params[key] = value
            batch.append(Param(key=key, value=value))
        if changed:
            log.warning(
                "MLflow keeps a parameter's first value; this continued run's config.yaml (logged as an artifact at "
                "the end) has the new ones: %s",
                ", ".join(changed),
            )
        for start in range(0, len(batch), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(run_id=self.run_id, params=batch[start : start + 100], **self._log_batch_kwargs)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts' keys joined by dots (a dotted key from flat_config stays as it is)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger (conf/logger/tensorboard.yaml), which raises a multi-line ModuleNotFoundError when
    neither tensorboard nor tensorboardX is installed: one line naming the extra instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_extra("logger=tensorboard", "tensorboard", "tensorboard", "tensorboardX")
        super().__init__(*args, **kwargs)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger for a run directory: `continue_run` (resume=true) continues the W&B run id recorded in
    its trackers.json (offline, a continued session is a second offline-run folder with the same id: sync both with
    `wandb sync --id ID`)."""

    def __init__(self, *, run_dir: str, continue_run: bool = False, name: str | None = None, **kwargs: Any) -> None:
        require_extra("logger=wandb", "wandb", "wandb")
        saved = read_ids(run_dir).get("wandb", {}) if continue_run else {}
        if saved.get("id") and not (kwargs.get("id") or kwargs.get("version")):
            kwargs["id"] = saved["id"]
            log.info("W&B: continuing run %s", saved["id"])
        super().__init__(name=tracker_run_name(name, run_dir), **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None, which wandb warns about
            self._wandb_init.pop("anonymous", None)
        self._run_dir = Path(run_dir)

    def add_tags(self, names: Sequence[str]) -> None:
        if names:
            self._wandb_init["tags"] = [*dict.fromkeys([*(self._wandb_init.get("tags") or []), *names])]

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        started = self._experiment is None
        run = super().experiment
        if started and getattr(run, "id", None):
            _save_ids(self._run_dir, "wandb", {"id": run.id, "project": self._project, "offline": self._offline})
        return run
