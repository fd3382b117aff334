"""Lightning plumbing for checkpoints: written so a crash cannot corrupt them, read by the one reader
(`spam_lightning.inference.checkpoint.read_checkpoint`), and last.ckpt written every n steps and on interruption."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from spam_lightning.files import atomic_write
from spam_lightning.inference.checkpoint import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint atomically (`spam_lightning.files.atomic_write`: a temporary file, fsync, rename):
    a crash never leaves a truncated last.ckpt that resume would load.

    The file is written by a background thread, so training goes on while it reaches the disk (on a GPU
    the write took longer than an epoch of the book's recipe). What it writes is a CPU copy taken at the save,
    so later steps cannot change it. Writes and removals run one at a time in the order Lightning asked for
    them; reading a checkpoint, and the end of fit or test, wait for the writes queued before. Once one fails
    (a full disk), those queued after it are skipped: a new best checkpoint that was not written must not be
    followed by the removal of the old one, and no write may still be filling the disk while the run reports the
    failure and its loggers write their last files. Under DDP (another process may read the file as soon as the
    save returns) the write is synchronous.

    Why not Lightning's `AsyncCheckpointIO` wrapped around a synchronous atomic write (lightning 2.6's
    plugins/io/async_plugin.py): it makes only `save_checkpoint` asynchronous, and so loses guarantees we keep:
    - `remove_checkpoint` runs at once, before the saves queued ahead of it. ModelCheckpoint saves a new best and
      then removes the old one: the old file is gone while the new one is still being written, and a kill in
      that window leaves the run with no best checkpoint (tests/training/test_checkpoint.py::
      test_background_writes_keep_their_order_where_lightnings_async_io_does_not shows both).
    - `load_checkpoint` does not wait for the queued writes: a read in the same process can find the old file
      or none.
    - Its snapshot is `t.detach().clone()` on the tensor's device: on a GPU each queued save holds a second copy
      of the weights and optimizer state in GPU memory, where ours is a CPU copy.
    - It writes in the background under DDP too, where another rank may read the file once the save returns.
    The atomic write itself (temporary file, fsync, rename, fsync of the folder) would be kept either way.
    """

    def __init__(self) -> None:
        super().__init__()
        self._writer: ThreadPoolExecutor | None = None
        self._queued: list[Future[None]] = []
        self._failed = False  # a queued write or removal failed: the writer skips the rest of the queue

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.wait()
            atomic_write(path, lambda f: torch.save(checkpoint, f))
            return
        snapshot = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
        self._queue(atomic_write, path, lambda f: torch.save(snapshot, f))

    def remove_checkpoint(self, path: str | Path) -> None:
        self._queue(super().remove_checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> Any:
        # The one checkpoint reader (weights_only=True: never runs pickled code), onto the CPU; Lightning moves
        # the state to the model's device as it loads it.
        self.wait()
        return read_checkpoint(path)

    def teardown(self) -> None:
        self.wait()

    def wait(self) -> None:
        """Block until every queued write and removal is done (or skipped); re-raise the first that failed."""
        queued, self._queued = self._queued, []
        errors = [future.exception() for future in queued]  # each waits for its future
        self._failed = False
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def _queue(self, fn: Callable[..., Any], *args: Any) -> None:
        if any(f.done() and f.exception() is not None for f in self._queued):
            self.wait()  # raises: a checkpoint that could not be written stops training
        self._queued = [f for f in self._queued if not f.done()]
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._queued.append(self._writer.submit(self._unless_failed, fn, *args))

    def _unless_failed(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._failed:
            return
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            raise


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
