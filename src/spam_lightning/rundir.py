"""One run per run directory: a second run never writes into a folder that holds another one, two runs never
write into one folder at once, and a run that fails before it starts leaves no folder behind.

`RunDirGuard` (a Hydra callback, `hydra.callbacks` in conf/train.yaml) checks before Hydra creates or writes
anything in the folder, and locks it for as long as the process runs (`lock_dir`); `remove_unstarted` cleans
up after a run that failed before writing its config.yaml.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# What a run writes once it has started; a folder holding one of these holds a run.
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.json")
# What Hydra writes into a run directory before our code runs.
HYDRA_FILES = (".hydra", "train.log")


# The folders this process has locked, and the open descriptor that holds each lock.
_locks: dict[Path, int] = {}


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
        if holds_run(run_dir) and not _continues(config):
            raise SystemExit(_refusal(run_dir))

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
