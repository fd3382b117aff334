"""Checkpoints a crash cannot corrupt, and last.ckpt written every n steps and on interruption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from spam_lightning.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint atomically (`spam_lightning.files.atomic_write`): a crash never leaves a
    truncated last.ckpt that resume would load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> Any:
        # Our checkpoints hold only tensors and plain values: never run pickled code when reading one.
        # Not super(): TorchCheckpointIO.load_checkpoint takes weights_only only from Lightning 2.6 on (2.4 and
        # 2.5 read with weights_only=False); the reader it calls takes weights_only in every Lightning >= 2.4.
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return pl_load(path, map_location=map_location, weights_only=True)


class LastCheckpoint(Callback):
    """Write `dirpath/last.ckpt` every `every_n_steps` optimizer steps and when training is interrupted.

    (The epoch-level last.ckpt comes from a ModelCheckpoint.) Unlike Lightning's OnExceptionCheckpoint, the
    file stays after a later successful run, and nothing is saved after a crash inside a step, whose state
    may be half-updated: only Ctrl-C and SIGTERM count as interruptions.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None, filename: str = "last") -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be a positive integer or null, got {every_n_steps}")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != getattr(self, "_saved_step", None):
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = step  # with gradient accumulation the step repeats over micro-batches

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path, weights_only=False)
