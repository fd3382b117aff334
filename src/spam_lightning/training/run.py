"""One training run: build data, model and trainer from the Hydra config, fit, test, write metrics.json.

`train.py` (Hydra) calls `run(cfg)`. Extra DDP ranks run `python -m spam_lightning.training.run CONFIG`, with
the resolved config that rank 0 wrote into the run directory (see `spam_lightning.training.ddp`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import spam_lightning.paths  # noqa: F401  (registers the ${project_dir:} resolver that conf/train.yaml uses)
from spam_lightning.data.modules import TextDataModule
from spam_lightning.data.sms_spam import SPLITS
from spam_lightning.errors import ConfigError, DivergedError, DownloadError, check_int, user_error
from spam_lightning.files import DiskFullError, atomic_write_bytes, disk_full_error, require_file
from spam_lightning.inference.checkpoint import check_finite, read_checkpoint, read_record
from spam_lightning.model.gpt import PRESETS, make_config
from spam_lightning.model.weights import settle_ahead
from spam_lightning.training.ddp import use_resolved_config_launcher
from spam_lightning.training.feature_cache import check_cache_dir
from spam_lightning.training.module import SHORT_NAMES, SpamClassifier, use_tf32
from spam_lightning.training.progress import name_test_pass, progress_bar
from spam_lightning.training.runs import config_tree, keep_staged, log_through_root, silence_false_warnings
from spam_lightning.training.trackers import check_tags, finish_trackers, log_config, log_run_files, tag_runs

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)

REPORTED_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "loss")
# What resume means per setting. A run continues with the settings it was trained with: these model and data
# settings, if changed, refuse the resume with the list of differences (applying them mid-run would make the
# recorded config differ from what trained, e.g. AdamW keeps the learning rate stored in its state).
# Everything else applies to the rest of the run: trainer.max_epochs/max_steps (train longer),
# checkpoint_every_n_steps, model.cache_frozen/cache_dir/cache_max_gb/compile/tf32,
# data.eval_batch_size/num_workers/pin_memory, logging and progress bars.
RESUME_FIXED_MODEL = ("arch", "dropout", "num_classes", "trainable_layers", "pool", "lr", "weight_decay", "scheduler")
RESUME_FIXED_MODEL += ("warmup_steps", "finetune", "lora")
RESUME_FIXED_DATA = ("seed", "splits_sha256", "batch_size", "drop_last", "bucket_by_length", "max_length", "padding")
RESUME_FIXED_DATA += ("positive_class",)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or continue) one run as configured; returns what it writes to metrics.json."""
    log_through_root()  # Hydra has set up its handlers by now: our and Lightning's messages reach train.log
    silence_false_warnings()
    if cfg.get("print_config"):
        info("%s", config_tree(cfg))
    run_dir = Path(cfg.run_dir)
    _make_paths_absolute(cfg)  # recorded paths (config.yaml, checkpoints) then work from any directory
    check_seeds(cfg)
    tags = check_tags(cfg.get("tags"))
    if OmegaConf.select(cfg, "model.cache_dir"):
        check_cache_dir(cfg.model.cache_dir, runs_dir=cfg.get("runs_dir"))
    settle_ahead()  # the GPT train.py builds ahead has drawn its random numbers: the RNG is ours again
    L.seed_everything(cfg.seed, workers=True)
    # Validate everything cheap first, so a bad value fails before any download or training.
    context_length = make_config(cfg.model.net.arch).context_length
    datamodule: TextDataModule = instantiate(cfg.data, context_length=context_length)
    ckpt_path = _checkpoint_to_continue(cfg, run_dir)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    tag_runs(loggers, tags)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not loggers:  # logger=null: nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(progress_bar())
    fit_timer = FitTimer()
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, fit_timer], logger=loggers or False)
    _record_actual_precision(cfg, trainer)
    model = build_model_and_fetch_data(cfg.model, datamodule)
    _check_trains_something(cfg, trainer, datamodule)
    if ckpt_path is not None:  # before anything of the run changes (its config.yaml included)
        _check_compatible(ckpt_path, model, datamodule)

    config_file = run_dir / "config.yaml"
    if trainer.is_global_zero and not _is_ddp_worker():
        keep_staged()  # the checks passed: a continuing session's .hydra/ files and log join the run
        _remove_stale_temporaries(run_dir)
        atomic_write_bytes(config_file, OmegaConf.to_yaml(cfg, resolve=True).encode())
    launcher = use_resolved_config_launcher(trainer, config_file.resolve())
    use_tf32(model.hparams.tf32, trainer.strategy.root_device)
    try:
        log_config(loggers, cfg)  # the whole resolved config as every logger's parameters (model.lr, data.seed, ...)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            _say_interrupted(trainer, run_dir, "interrupted")
            raise SystemExit(130)
        if not cfg.get("test_after_fit", True):
            return {}
        start = time.perf_counter()
        best = _best_checkpoint(trainer, run_dir)
        results, test_scored = evaluate(trainer, model, datamodule, best)
        summary = {
            "labels": list(datamodule.labels),
            "positive_class": datamodule.positive_class,  # binary metrics and test_scores.csv are its; null: 3+ classes
            **results,
            "parameters": {"trainable": model.num_trainable_parameters, "total": model.num_total_parameters},
            "time_seconds": {"fit": round(fit_timer.seconds, 2), "test": round(time.perf_counter() - start, 2)},
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": best,
            "world_size": trainer.world_size,
            "tags": tags,
        }
        if trainer.is_global_zero:
            from spam_lightning.inference.report import write_test_scores, write_training_report  # matplotlib: 0.3 s

            atomic_write_bytes(run_dir / "metrics.json", json.dumps(summary, indent=2).encode())
            if test_scored is not None:
                write_test_scores(run_dir, test_scored)
            if cfg.get("report", True):
                write_training_report(run_dir)  # loss/accuracy curves, confusion matrix, PR curve (PNG)
            log_run_files(loggers, run_dir)  # metrics.json, config.yaml and the plots as MLflow / W&B artifacts
            log.info(results_table(summary, run_dir))
        return summary
    except Exception as err:  # a full disk, met by a checkpoint write or by any other writer (a logger's file)
        full = disk_full_error(err)
        if full is None:
            raise
        full = _checkpoint_write_disk_full(trainer) or full  # the write that filled the disk is the cause to name
        raise DiskFullError(f"{full}; then continue with: python train.py resume=true run_name={run_dir.name}") from err
    except SIGTERMException:  # Lightning raises it as a bare SystemExit: status 0, as if the run had succeeded
        _say_interrupted(trainer, run_dir, "stopped by SIGTERM")
        raise SystemExit(143) from None
    except SystemExit as stop:
        if trainer.interrupted and stop.code not in (130, 143):  # Ctrl-C: Lightning calls sys.exit(1) itself
            _say_interrupted(trainer, run_dir, "interrupted")
            raise SystemExit(130) from None
        raise
    finally:
        if launcher is not None:
            launcher.finish()
        finish_trackers(loggers, sys.exc_info()[1])  # the exception ending the run, if any: finished, killed or failed


def _checkpoint_write_disk_full(trainer: L.Trainer) -> DiskFullError | None:
    """The full disk met by a background checkpoint write, once it is done. A logger writing while that write fills
    the disk can meet the full disk first (its OSError names no file) and again while Lightning stops the run;
    Lightning then skips its teardown, which would have waited for the write and raised its error."""
    try:
        trainer.strategy.checkpoint_io.teardown()
    except Exception as err:
        return disk_full_error(err)
    return None


def _say_interrupted(trainer: L.Trainer, run_dir: Path, how: str) -> None:
    log.warning(
        "training %s at epoch %d, step %d; continue with: python train.py resume=true run_name=%s",
        how, trainer.current_epoch, trainer.global_step, run_dir.name,
    )  # fmt: skip


PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}  # Lightning's


def _record_actual_precision(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Lightning may run another precision than the one asked for (16-mixed becomes bf16-mixed on a CPU):
    config.yaml records the one that runs."""
    asked, actual = str(cfg.trainer.get("precision")), str(trainer.precision)
    if PRECISION_ALIASES.get(asked, asked) != actual:
        log.warning("trainer.precision=%s runs as %s on this device; config.yaml records %s", asked, actual, actual)
        cfg.trainer.precision = actual


def _check_trains_something(cfg: DictConfig, trainer: L.Trainer, datamodule: TextDataModule) -> None:
    """A configuration that would train nothing (and then report the untrained model's metrics) is an error."""
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if cfg.trainer.get(key) == 0:
            raise ConfigError(f"trainer.{key}=0 trains nothing; give a positive value (max_steps=-1: no limit)")
    if _is_ddp_worker():  # its node's data may not be prepared yet (Lightning does that in fit); rank 0 checks
        return
    datamodule.setup("fit")
    batches = datamodule.train_batches_per_epoch(trainer.world_size)
    if batches == 0:
        n = len(datamodule.datasets["train"])
        raise ConfigError(
            f"data.batch_size={datamodule.batch_size} with data.drop_last={datamodule.drop_last} gives no training "
            f"batch from the {n} training texts ({trainer.world_size} process(es)); use a smaller batch size"
        )


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary checkpoint files left by a process killed while writing (atomic_write's .NAME.*.tmp)."""
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):
        stale.unlink(missing_ok=True)
        info("removed %s, left by an interrupted checkpoint write", stale)


# Config keys that hold local paths (URLs and preset names are left as they are).
PATH_KEYS = ("data.source", "data.data_dir", "data.path", "data.train_file", "data.validation_file", "data.test_file")
PATH_KEYS += ("data.tokenizer_file", "model.pretrained", "model.cache_dir", "ckpt_path")
PATH_KEYS += ("runs_dir",)  # in the logger configs' MLflow database and artifact folder


def _make_paths_absolute(cfg: DictConfig) -> None:
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and "://" not in value and value not in PRESETS:
            OmegaConf.update(cfg, key, str(Path(value).expanduser().absolute()))


def build_model_and_fetch_data(model_cfg: DictConfig, datamodule: TextDataModule) -> SpamClassifier:
    """The model (its config checked first, then the pretrained weights downloaded or found in the cache), and
    the data and vocabulary (`prepare_data`), before the run writes anything. Offline, the run fails at once
    with one message naming every download it could not make and the override that replaces each one."""
    failed: list[DownloadError] = []
    model = None
    try:
        _num_classes(model_cfg, datamodule)
        model = instantiate(module_config(model_cfg))
    except Exception as err:
        cause = user_error(err)
        if not isinstance(cause, DownloadError):
            raise
        failed.append(cause)
    if not _is_ddp_worker():  # rank 0 prepares the data; Lightning has the other nodes' local rank 0 do it
        try:
            datamodule.prepare_data()
        except DownloadError as err:
            failed.insert(0, err)
    if failed:
        raise DownloadError.combine(failed)
    assert model is not None
    return model


def module_config(model_cfg: DictConfig) -> dict[str, Any]:
    """The model group resolved, without its short names: SpamClassifier's arguments, the net and the optimizer
    among them (the nodes read the short names through `${..lr}` interpolations)."""
    resolved = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(resolved, dict)
    return {key: value for key, value in resolved.items() if key not in SHORT_NAMES}


def _num_classes(model_cfg: DictConfig, datamodule: TextDataModule) -> int:
    """model.num_classes: the data's class count (null), or a value that must equal it. The class names are known
    without downloads (SMS: fixed; CSV: read from the local files)."""
    configured = model_cfg.get("num_classes")
    found = datamodule.num_classes
    if configured is not None and configured != found:
        raise ConfigError(
            f"model.num_classes={configured}, but the data has {found} classes {list(datamodule.labels)}; "
            "leave model.num_classes=null"
        )
    OmegaConf.update(model_cfg, "num_classes", found)  # config.yaml records the count the head has
    return found


class FitTimer(Callback):
    """Wall time of the fit, summed over the sessions of a resumed run (the sum is saved in checkpoints; the
    time an interrupted session spent after its last checkpoint is not counted)."""

    def __init__(self) -> None:
        self.before = 0.0
        self.start: float | None = None
        self.end: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.start is None:
            return self.before
        return self.before + (self.end or time.perf_counter()) - self.start

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("seconds", 0.0))


def evaluate(
    trainer: L.Trainer, model: SpamClassifier, datamodule: TextDataModule, ckpt_path: str | None
) -> tuple[dict[str, dict[str, float]], torch.Tensor | None]:
    """Metrics of one checkpoint (the model's current weights if None) on each split, in eval mode; and each
    test text's label and P(positive class) (binary models), the input of the PR curve."""
    datamodule.setup("test")
    source = ckpt_path or "the trained weights"
    results = {}
    for split in SPLITS:
        model.test_prefix = "test" if split == "test" else f"eval_{split}"
        name_test_pass(trainer, f"Evaluating {split}")
        logged = trainer.test(model, dataloaders=datamodule.eval_dataloader(split), ckpt_path=ckpt_path, verbose=False)
        ckpt_path = None  # loaded once; the model now holds those weights
        results[split] = {key.split("/", 1)[1]: round(float(v), 6) for key, v in logged[0].items()}
        if not math.isfinite(results[split].get("loss", 0.0)):
            raise DivergedError(
                f"evaluating {source} on the {split} split gives a loss of {results[split]['loss']}: "
                "the model's outputs are not finite (diverged weights?); no metrics.json is written"
            )
        if model.test_confusion_matrix is not None:
            results[split]["confusion_matrix"] = model.test_confusion_matrix.tolist()
    model.test_prefix = "test"
    return results, model.test_scored


def results_table(summary: dict[str, Any], run_dir: Path) -> str:
    header = f"{'split':<12}" + "".join(f"{m:>10}" for m in REPORTED_METRICS)
    rows = [
        f"{split:<12}" + "".join(f"{summary[split].get(m, float('nan')):>10.4f}" for m in REPORTED_METRICS)
        for split in SPLITS
    ]
    params = summary["parameters"]
    times = summary["time_seconds"]
    return "\n".join(
        [
            "",
            header,
            *rows,
            f"trainable parameters: {params['trainable']:,} of {params['total']:,}; "
            f"fit {times['fit']:.1f} s, test {times['test']:.1f} s",
            f"run directory: {run_dir}",
        ]
    )


def _is_ddp_worker() -> bool:
    return rank_zero_only.rank != 0


def _checkpoint_to_continue(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.get("ckpt_path"):
        folder_hint = "training continues from a checkpoint file (RUN_DIR/checkpoints/last.ckpt), not an exported model"
        return str(require_file(cfg.ckpt_path, "ckpt_path", ConfigError, folder_hint))
    if cfg.get("resume"):
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            info("resuming from %s", last)
            return str(last)
        info("resume=true but %s does not exist: starting fresh", last)
    return None


def _check_compatible(ckpt_path: str, model: SpamClassifier, datamodule: TextDataModule) -> None:
    """Refuse to continue from a checkpoint that cannot be continued, or with settings that differ from the ones it
    was trained with (RESUME_FIXED_*), listing every difference."""
    ckpt = read_checkpoint(ckpt_path)
    source = f"checkpoint {ckpt_path!r}"
    read_record(ckpt, source)  # an older version's checkpoint is refused here
    if "optimizer_states" not in ckpt:
        raise ConfigError(
            f"checkpoint {ckpt_path!r} holds the model weights only (a best-by-validation checkpoint), not the "
            "optimizer and loop state a run continues from; continue from last.ckpt (resume=true)"
        )
    saved_model, ours_model = ckpt.get("hyper_parameters", {}), dict(model.hparams)
    saved_data, ours_data = ckpt.get(type(datamodule).__qualname__, {}), datamodule.state_dict()
    differences = [
        f"{group}.{key}={saved[key]!r} (this run: {ours.get(key)!r})"
        for group, saved, ours, keys in (
            ("model", saved_model, ours_model, RESUME_FIXED_MODEL),
            ("data", saved_data, ours_data, RESUME_FIXED_DATA),
        )
        for key in keys
        if key in saved and saved[key] != ours.get(key)
    ]
    if differences:
        raise ConfigError(
            f"checkpoint {ckpt_path!r} was trained with {', '.join(differences)}; a run continues with the settings "
            "it was trained with: drop these overrides, or start a new run_name"
        )
    ours_state = model.state_dict()
    for name, tensor in ckpt.get("state_dict", {}).items():
        if name not in ours_state:
            raise ConfigError(f"{source} holds {name}, which this model does not have: a checkpoint of another model")
        if ours_state[name].shape != tensor.shape:
            raise ConfigError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, this model's has {tuple(ours_state[name].shape)}: "
                "a checkpoint of another model size"
            )
    check_finite(ckpt.get("state_dict", {}), source)  # training on from NaN weights gives nan losses


def _best_checkpoint(trainer: L.Trainer, run_dir: Path) -> str | None:
    """The best checkpoint's path; in this run's folder when the run was moved since it was written (Lightning
    restores the recorded absolute path)."""
    callback = trainer.checkpoint_callback
    if not (isinstance(callback, ModelCheckpoint) and callback.best_model_path):
        return None
    recorded = Path(callback.best_model_path)
    here = run_dir.absolute() / "checkpoints" / recorded.name
    if not recorded.is_file() and here.is_file():
        return str(here)
    if not recorded.is_file():
        raise ConfigError(
            f"the best checkpoint {str(recorded)!r} that this run recorded is missing (deleted or moved); evaluate "
            f"another one with: python evaluate.py ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        )
    return str(recorded)


MAX_SEED = 2**32 - 1  # numpy's (and so pandas' sampling) seed range; Lightning would pick another seed silently


def check_seeds(cfg: Mapping[str, Any]) -> None:
    """train.py's `seed` and `data.seed`."""
    check_int("seed", cfg.get("seed"), 0, MAX_SEED)
    check_int("data.seed", (cfg.get("data") or {}).get("seed", 0), 0, MAX_SEED)


def main(argv: list[str] | None = None) -> None:
    """`python -m spam_lightning.training.run CONFIG.yaml`: run a resolved config (how extra DDP ranks start)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m spam_lightning.training.run RESOLVED_CONFIG.yaml")
    run(OmegaConf.load(args[0]))


if __name__ == "__main__":
    main()
