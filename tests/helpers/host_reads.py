"""Counting the places where a training step reads a tensor's value on the host, which on a GPU makes the step wait
for the device (a host-device sync): `.item()`, `bool()`, `float()`, `.tolist()`, `.cpu()`, `torch.unique`, ...

Counted on the CPU with a TorchFunctionMode, which sees those calls whatever the device. torchmetrics'
`normalize_logits_if_needed` asks `torch.all(...)` only for CPU tensors (on a GPU it uses torch.where, no sync): its
calls are left out."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import lightning as L
from torch.overrides import TorchFunctionMode

HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "unique", "nonzero"}
CPU_ONLY = ("normalize_logits_if_needed",)


class _Count(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in HOST_READS:
            stack = traceback.extract_stack(limit=40)[:-1]
            if not any(frame.name in CPU_ONLY for frame in stack):
                outside_torch = [f for f in stack if "/torch/" not in f.filename.replace("\\", "/")]
                caller = outside_torch[-1] if outside_torch else stack[-1]
                self.reads.append(f"{func.__name__} at {caller.filename}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(L.Callback):
    """From the second epoch on, the host reads between the start of one training batch and the start of the next
    (the step, its backward pass and optimizer step, the callbacks, Lightning's logging and the progress bar),
    written to `path` as a JSON list of lists."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.mode: _Count | None = None
        self.steps: list[list[str]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 1:
            self.mode = _Count()
            self.mode.__enter__()

    def on_train_batch_start(self, *args: Any) -> None:
        if self.mode is not None:
            self.steps.append(self.mode.reads)
            self.mode.reads = []

    def on_validation_start(self, *args: Any) -> None:
        if self.mode is not None:  # the epoch's last step would run into the validation: not counted
            self.mode.__exit__(None, None, None)
            self.mode = None
            self.path.write_text(json.dumps(self.steps[1:]))
