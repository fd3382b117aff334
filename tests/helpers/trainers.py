"""A quiet single-process CPU Trainer for the unit tests (no logger, checkpoints, bars or sanity steps)."""

from __future__ import annotations

from typing import Any

import lightning as L

QUIET = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(**{**QUIET, **kwargs})
