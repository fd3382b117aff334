"""Saving last.ckpt when a training run is interrupted (Ctrl-C or SIGTERM), so resume=true continues it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SaveOnInterrupt(Callback):
    """Write `dirpath/filename.ckpt` when training is interrupted by the user or the scheduler.

    Unlike Lightning's OnExceptionCheckpoint it keeps the file after a later, successful run ends, and it
    does not save after a crash inside a step (that state may be half-updated).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
