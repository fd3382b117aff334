"""The commands: `python train.py` / `spam-train`, and likewise predict, evaluate, export, serve and baseline
(pyproject.toml's console scripts). Each is a Hydra app on the configs that `paths.config_dir` finds: the checkout's
conf/ or the copy packaged in the wheel, so the commands work from any directory.

A command imports only what it runs (prediction never imports Lightning).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from spam_lightning.errors import MissingExtraError, one_line_errors, require_extra
from spam_lightning.paths import config_dir


def _options_help(name: str) -> str:
    """A command's --help: its config file's own options with their comments (not Hydra's section or defaults)."""
    lines, skipping = [], False
    for line in (config_dir() / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("hydra:"):
            break
        if line.startswith("defaults:"):
            skipping = True
        elif skipping and not line.startswith((" ", "-")):
            skipping = False
        if not skipping:
            lines.append(line)
    return "\n".join(lines).strip().replace("$", "$$")  # Hydra substitutes $NAME in the help template


if not OmegaConf.has_resolver("options_help"):
    OmegaConf.register_new_resolver("options_help", _options_help)  # conf/{predict,evaluate,export}.yaml: --help


def _hydra_app(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    return hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)


def _build_gpt_ahead(cfg: DictConfig) -> None:
    """Start building the model's GPT (random init, weights read and copied) in a background thread while this
    process imports Lightning (`spam_lightning.model.weights.build_gpt_ahead`). Only for the shipped net node; a
    value it cannot read is left for the run to report in its order."""
    net = cfg.model.get("net")
    if net is None or net.get("_target_") != "spam_lightning.model.net.build_net":
        return
    from spam_lightning.model.gpt import make_config
    from spam_lightning.model.weights import build_gpt_ahead

    try:
        args = OmegaConf.to_container(net, resolve=True)
        assert isinstance(args, dict)
        arch = make_config(args["arch"], dropout=args["dropout"])
        build_gpt_ahead(arch, args["pretrained"], args["init_seed"], cfg.seed)
    except Exception:  # any bad value: the run builds in order and says what is wrong
        return


def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _build_gpt_ahead(cfg)
    from spam_lightning.training.run import run
    from spam_lightning.training.runs import drop_staged, remove_unstarted
    from spam_lightning.training.sweeps import objective_direction, objective_value, run_job_in_sweep

    objective = str(cfg.get("optimized_metric") or "validation/accuracy")

    def checked_run() -> dict[str, Any]:
        objective_direction(objective)  # a misspelt optimized_metric fails before training
        return run(cfg)

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        metrics = run_job_in_sweep(checked_run, Path(cfg.run_dir))
    else:
        try:
            with one_line_errors():
                try:
                    metrics = checked_run()
                except Exception:
                    remove_unstarted(Path(cfg.run_dir))  # a run that failed before it started leaves no folder
                    raise
        finally:
            drop_staged()  # a refused resume: its Hydra files never joined the run
    # Returned for sweepers (Optuna's objective): optimized_metric of this job (None: failed, or no metrics).
    return objective_value(metrics or {}, objective)


def _torchrun_setup() -> None:
    """Under torchrun every process runs this command: one shared run directory, written by global rank 0 only."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    if not any(arg.lstrip("+").startswith("run_name=") for arg in sys.argv[1:]):
        raise SystemExit(
            "train.py under torchrun: pass run_name=NAME (the same on every node); otherwise each node "
            "names its run directory after its own start time"
        )
    if os.environ.get("RANK", "0") != "0":  # Hydra of the other ranks: no .hydra/ folder, no log file
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _launcher_installed() -> None:
    """hydra/launcher=submitit_* is a Hydra plugin, found only when installed: without it Hydra's error lists the
    launchers it has; one line naming the extra instead."""
    for arg in sys.argv[1:]:
        if arg.lstrip("+").startswith("hydra/launcher=submitit"):
            try:
                require_extra(arg.lstrip("+"), "slurm", "hydra_plugins.hydra_submitit_launcher")
            except MissingExtraError as err:
                raise SystemExit(f"error: {err}") from None


def _null_config_groups() -> None:
    """`logger=null` turns logging off, as in lightning-hydra-template: Hydra cannot set a config group to null
    from the command line, so it becomes `~logger` (the group removed)."""
    sys.argv = ["~logger" if arg == "logger=null" else arg for arg in sys.argv]


def train() -> None:
    """Fine-tune (python train.py / spam-train): one run, a grid (-m a=1,2) or a search (-m hparams_search=optuna).

    In a sweep a job that raises is recorded as failed (failed.json in its folder) and the sweep goes on; the exit
    status says whether the sweep failed (hydra.callbacks.sweep_summary.fail_on; see spam_lightning.training.sweeps).
    A user error (config value, data file, failed download) is one `error:` line and exit status 1; a run that fails
    before it starts leaves no run directory.
    """
    from spam_lightning.training.sweeps import exit_code

    _null_config_groups()
    _launcher_installed()
    _torchrun_setup()
    _hydra_app("train", _train)()
    code = exit_code()
    # The run is over (files written and closed, loggers finished): spare the interpreter's shutdown its garbage
    # collections over every object of torch, Lightning and their imports (seconds on a small CPU). Objects are
    # still freed as their references go; only unreachable cycles are left to the operating system.
    gc.freeze()
    sys.exit(code)


def _one_line_errors(module: str, extra: tuple[str, ...] = ()) -> Callable[[DictConfig], None]:
    """The task of predict, evaluate and export: `module.run(cfg)`, imported once Hydra has parsed the command line
    (--help needs no torch), with one-line errors. `extra`: (command, extra, modules...) when the command needs an
    extra: each of its modules."""

    def task(cfg: DictConfig) -> None:
        with one_line_errors(also=(OSError, ValueError)):  # bad paths, inputs, checkpoints: one line, no traceback
            if extra:
                command, name, *needed = extra
                for needed_module in needed:
                    require_extra(command, name, needed_module)
            import_module(module).run(cfg)

    return task


def predict() -> None:
    """Classify texts with a trained model (python predict.py / spam-predict; conf/predict.yaml)."""
    _hydra_app("predict", _one_line_errors("spam_lightning.inference.predict"))()


def evaluate() -> None:
    """Metrics, misclassified texts and a threshold for a trained model (python evaluate.py / spam-evaluate)."""
    _hydra_app("evaluate", _one_line_errors("spam_lightning.inference.evaluate"))()


def export() -> None:
    """Write a trained model as a folder: ours, Hugging Face's or ONNX (python export.py / spam-export)."""
    _hydra_app("export", _one_line_errors("spam_lightning.inference.export"))()


def serve() -> None:
    """A trained model behind HTTP, with a web page (python serve.py / spam-serve; conf/serve.yaml)."""
    needs = ("serve.py", "serve", "litserve", "fastapi_offline")
    _hydra_app("serve", _one_line_errors("spam_lightning.inference.serve", extra=needs))()


def baseline() -> None:
    """TF-IDF + logistic regression on the training splits (python baseline.py / spam-baseline; conf/baseline.yaml)."""
    _hydra_app("baseline", _one_line_errors("spam_lightning.training.baseline"))()
