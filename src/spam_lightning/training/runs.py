"""One run per run directory: a second run never writes into a folder that holds another one, two runs never
write into one folder at once, and a run that fails before it starts leaves no folder behind.

`RunDirGuard` (a Hydra callback, `hydra.callbacks` in conf/train.yaml) checks before Hydra creates or writes
anything in the folder, and locks it for as long as the process runs (`lock_dir`); `remove_unstarted` cleans
up after a run that failed before writing its config.yaml.

A session that continues a run (resume=true, ckpt_path=) changes nothing of it before its checks pass: Hydra writes
that session's `.hydra/` files and log into a private staging folder outside the run, which joins the run only then
(`keep_staged`); a refused resume leaves every file of the run as it was (`drop_staged`).

One log for a run: our messages, Lightning's and Python warnings reach Hydra's handlers (console and train.log).

No Lightning here: `RunDirGuard` runs as a Hydra callback before the job, and the job imports Lightning while the
model's weights load (`spam_lightning.model.weights.build_gpt_ahead`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

# What a run writes once it has started; a folder holding one of these holds a run.
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.json")
# What Hydra writes into a run directory before our code runs.
HYDRA_FILES = (".hydra", "train.log")


# The folders this process has locked, and the open descriptor that holds each lock.
_locks: dict[Path, int] = {}
# A continued run's Hydra files of this session, not yet in the run: (run directory, staging folder, log file name).
_staged: tuple[Path, Path, str] | None = None


def lock_dir(folder: Path, what: str = "run") -> None:
    """Lock `folder` for this process (an exclusive flock on the folder itself), or exit with one line if
    another process holds it. The kernel drops the lock when the process ends, however it ends: a crashed or
    killed run never leaves a stale lock, and no lock file is left behind. Held until `unlock_dir` or exit.
    (Not on Windows, which has no flock: there two runs with one run_name are not stopped.)"""
    if sys.platform == "win32":
        return
    import fcntl

    folder = folder.absolute()
    if folder in _locks:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SystemExit(
            f"error: {folder} is in use by another {what} that is still running; wait for it to end (a killed "
            "one frees the folder at once), or start a new run with another run_name=NAME (nothing was written)"
        ) from None
    _locks[folder] = fd


def unlock_dir(folder: Path) -> None:
    fd = _locks.pop(folder.absolute(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_MARKERS)


def remove_unstarted(run_dir: Path) -> None:
    """Remove Hydra's files from a run directory whose run failed before it started, and the folder if that
    leaves it empty (a failed config must not leave `runs/<timestamp>/` folders holding only `.hydra/`)."""
    if not run_dir.is_dir() or holds_run(run_dir):
        return
    if any(p.name not in HYDRA_FILES for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / "train.log").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something appeared meanwhile: leave it
        run_dir.rmdir()


def _stage_hydra_files(config: DictConfig, run_dir: Path) -> None:
    """Point Hydra's `.hydra/` output and log file of this session at a new private folder (an absolute
    hydra.output_subdir replaces the run directory: pathlib's join)."""
    global _staged
    stage = Path(tempfile.mkdtemp(prefix="spam_lightning-resume-"))
    log_name = f"{config.hydra.job.name}.log"
    with read_write(config):
        if config.hydra.output_subdir is not None:
            config.hydra.output_subdir = str(stage / "hydra")
        if OmegaConf.select(config, "hydra.job_logging.handlers.file") is not None:
            config.hydra.job_logging.handlers.file.filename = str(stage / log_name)
    _staged = (run_dir, stage, log_name)


def keep_staged() -> None:
    """The continued run's checks passed: this session's Hydra files join it. The first session's `.hydra/` (the
    command line that started the run) stays as it is; each continuing session's goes into `.hydra/resume-1/`,
    `resume-2/`, ... (its hydra.yaml names the staging folder it was written to); its log so far is appended to
    train.log, where the rest of it then goes."""
    global _staged
    if _staged is None:
        return
    run_dir, stage, log_name = _staged
    _staged = None
    if (stage / "hydra").is_dir():
        number = 1
        while (run_dir / ".hydra" / f"resume-{number}").exists():
            number += 1
        (run_dir / ".hydra").mkdir(exist_ok=True)
        shutil.move(stage / "hydra", run_dir / ".hydra" / f"resume-{number}")
    _continue_log(stage / log_name, run_dir / log_name)
    shutil.rmtree(stage, ignore_errors=True)


def _continue_log(staged_log: Path, run_log: Path) -> None:
    """Append what this session logged so far to the run's log, and point Hydra's file handler at it."""
    file_handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    handler = next((h for h in file_handlers if h.baseFilename == str(staged_log)), None)
    if handler is None:  # no log file (a hydra/job_logging without one)
        return
    handler.acquire()  # no record is written between the copy and the switch
    try:
        handler.flush()
        with run_log.open("ab") as out:
            out.write(staged_log.read_bytes())
        handler.baseFilename = str(run_log)
        previous = handler.setStream(run_log.open(handler.mode, encoding=handler.encoding))
        if previous is not None:
            previous.close()
    finally:
        handler.release()


def drop_staged() -> None:
    """A continued run that stopped before its checks passed (refused): its Hydra files never join the run."""
    global _staged
    if _staged is not None:
        shutil.rmtree(_staged[1], ignore_errors=True)
        _staged = None


def check_run_name(config: DictConfig) -> None:
    """A run_name is a folder under runs_dir: `../x` would write outside it, and an absolute one would be nested
    under it silently."""
    name = str(config.get("run_name"))
    if Path(name).is_absolute() or ".." in Path(name).parts or not name.strip():
        raise SystemExit(
            f"error: run_name={name!r} must be a folder name under runs_dir (not absolute, no '..'); "
            "to write elsewhere set runs_dir=FOLDER"
        )


def _continues(config: DictConfig) -> bool:
    return bool(config.get("resume") or config.get("ckpt_path"))


def _refusal(run_dir: Path) -> str:
    return (
        f"error: {run_dir} already holds a run; continue it with resume=true, or start a new one with "
        "another run_name=NAME (nothing was written)"
    )


class RunDirGuard(Callback):
    """Refuse to start a run (or a grid sweep) whose folder holds an earlier one, unless it continues it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_run_name(config)
        if os.environ.get("RANK", "0") != "0":  # torchrun: the other ranks share rank 0's folder
            return
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        lock_dir(run_dir)  # before anything is read or written: a resume=true of a live run is refused too
        if holds_run(run_dir):
            if not _continues(config):
                raise SystemExit(_refusal(run_dir))
            _stage_hydra_files(config, run_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_dir(Path(str(OmegaConf.select(config, "hydra.run.dir"))))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_run_name(config)
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        lock_dir(sweep_dir, "sweep")  # one sweep (grid or search) writes into a sweep folder at a time
        if "BasicSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_")):
            return  # an Optuna search continues its study into new trial folders
        if _continues(config):
            return
        for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
            if holds_run(job_dir):
                raise SystemExit(_refusal(sweep_dir).replace("holds a run", f"holds a sweep ({job_dir.name}/ ...)"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_dir(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))))


# Loggers that add their own console handler at import time when nobody has configured logging yet (this
# package's __init__, Lightning's), and stop propagating: under Hydra their records would miss train.log.
_SELF_HANDLED = ("spam_lightning", "lightning", "lightning.pytorch", "lightning.fabric")


def log_through_root() -> None:
    """Hand these loggers' records, and Python warnings, to the root logger's handlers once they exist
    (Hydra configures them when the job starts, after our imports ran)."""
    if not logging.getLogger().handlers:
        return
    for name in _SELF_HANDLED:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


# Lightning warnings that are false for this project, each with the reason.
FALSE_WARNINGS = (
    r".*your dataloader is not resumable",  # the data module skips the batches already trained (data/modules.py)
    r"Experiment logs directory .* will be deleted",  # ResumableCSVLogger appends to metrics.csv
    r"Checkpoint directory .* exists and is not empty",  # a run directory holds one run only (training/runs.py)
    r"Found \d+ module\(s\) in eval mode",  # the frozen part runs in eval mode on purpose (training/module.py)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, about torch; nothing to act on
    # A batch is a slice of token ids already in memory, padded: worker processes would add their start-up (seconds
    # per loader, per epoch without persistent workers) and save nothing (data.num_workers stays available).
    r"The '\w+' does not have many workers",
)


def silence_false_warnings() -> None:
    for pattern in FALSE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def config_tree(cfg: DictConfig) -> str:
    """The composed config, resolved, as a tree: one branch a config group (data, model, trainer, ...), then the
    top-level values (print_config=true)."""
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    groups = {key: value for key, value in resolved.items() if isinstance(value, dict)}
    values = {key: value for key, value in resolved.items() if not isinstance(value, dict)}
    branches = [(name, OmegaConf.to_yaml(group)) for name, group in groups.items()]
    branches.append(("top level", OmegaConf.to_yaml(values)))
    lines = ["config"]
    for i, (name, text) in enumerate(branches):
        last = i == len(branches) - 1
        lines.append(("└── " if last else "├── ") + name)
        lines.append(textwrap.indent(text.rstrip(), "    " if last else "│   "))
    return "\n".join(lines)
