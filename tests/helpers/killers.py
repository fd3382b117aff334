"""Test-only callbacks that SIGKILL the training process at chosen points (crash-safety tests).

Injected with Hydra overrides, e.g. `+callbacks.killer._target_=killers.KillAtStep +callbacks.killer.step=25`
and PYTHONPATH=tests/helpers.
"""

from __future__ import annotations

import os
import signal
import signal as signal_module
import time
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
    """Killed halfway through writing the `nth` checkpoint file (after half its bytes hit the disk).

    Every checkpoint file counts (weights-only best checkpoints too): the checkpoint plugin's save is wrapped.
    Writes queued before the nth are finished first, so the one that dies is the nth.
    """

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.seen = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        checkpoint_io = trainer.strategy.checkpoint_io
        real_save_checkpoint = checkpoint_io.save_checkpoint

        def counting_save(checkpoint: dict, path: Any, *args: Any, **kwargs: Any) -> None:
            self.seen += 1
            if self.seen == self.nth:
                checkpoint_io.wait()  # the earlier writes complete; the nth is the one that dies
                self._die_in_next_write()
            real_save_checkpoint(checkpoint, path, *args, **kwargs)

        checkpoint_io.save_checkpoint = counting_save

    @staticmethod
    def _die_in_next_write() -> None:
        import io

        import torch

        import spam_lightning.training.checkpoints as checkpointing

        real_save = torch.save

        def half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()

        checkpointing.torch.save = half_then_die  # the module's next write is the nth checkpoint's


class SignalAtStep(Callback):
    """Sends `signal` (a name: SIGTERM, SIGINT) to this process right after optimizer step `step`."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step = step
        self.signal = getattr(signal_module, signal)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class SignalInTest(Callback):
    """Sends SIGTERM to this process during the first test batch (the evaluation after fitting)."""

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        os.kill(os.getpid(), signal_module.SIGTERM)


class HoldAtStep(Callback):
    """Right after optimizer step `step`, waits for the checkpoint writes queued so far, creates the file `ready`
    and then sleeps until the process is killed (a run that is alive and holds its run directory, whose files
    no longer change, for the concurrency tests)."""

    def __init__(self, step: int, ready: str) -> None:
        self.step = step
        self.ready = ready

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.strategy.checkpoint_io.wait()  # last.ckpt is written in the background
            open(self.ready, "w").close()
            while True:
                time.sleep(1)
