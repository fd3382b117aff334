"""Test-only callbacks that SIGKILL the training process at chosen points (crash-safety tests).

Injected with Hydra overrides, e.g. `+callbacks.killer._target_=killers.KillAtStep +callbacks.killer.step=25`
and PYTHONPATH=tests/helpers.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(Callback):
    """Killed right after optimizer step `step` (and its step checkpoint, if one is due)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            _die()


class KillInValidation(Callback):
    """Killed in the middle of the validation of epoch `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            _die()


class KillDuringCheckpointWrite(Callback):
    """Killed halfway through writing the `nth` checkpoint file (after half its bytes hit the disk)."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.seen = 0

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.seen += 1
        if self.seen != self.nth:
            return
        import io

        import torch

        import spam_lightning.checkpointing as checkpointing

        real_save = torch.save

        def half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()

        checkpointing.torch.save = half_then_die  # the module's next write is the one being dumped now
