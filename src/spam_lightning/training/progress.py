"""Progress bars: Lightning's own (rich when installed, else tqdm), with each evaluation pass named and the
training loss read every `trainer.log_every_n_steps` steps.

Lightning labels every `trainer.test` pass "Testing"; a run evaluates three splits in a row, so ours say which one
(`name_test_pass`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE  # here in Lightning 2.4-2.6


class _NamedTestPass:
    label = "Testing"

    @property
    def test_description(self) -> str:
        return self.label


class _LossEveryLogStep:
    """The training step's loss (`train/loss_step`, logged for the loggers only) on the bar, read every
    `trainer.log_every_n_steps` steps: a loss logged with prog_bar=True is copied to the host after every step,
    which on a GPU makes each step wait for the previous one to finish."""

    _shown_loss: str | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics: dict[str, Any] = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        if trainer.training and (self._shown_loss is None or trainer.global_step % trainer.log_every_n_steps == 0):
            loss = trainer.callback_metrics.get("train/loss_step")
            if loss is not None:
                self._shown_loss = f"{float(loss):.3g}"
        if self._shown_loss is not None:
            metrics["train/loss_step"] = self._shown_loss
        return metrics


class NamedRichProgressBar(_NamedTestPass, _LossEveryLogStep, RichProgressBar):
    pass


class NamedTQDMProgressBar(_NamedTestPass, _LossEveryLogStep, TQDMProgressBar):
    pass


def progress_bar() -> ProgressBar:
    """The bar Lightning would pick by default, with named test passes."""
    return NamedRichProgressBar() if _RICH_AVAILABLE else NamedTQDMProgressBar()


def name_test_pass(trainer: L.Trainer, label: str) -> None:
    """Label the progress bar of the next `trainer.test` call."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, _NamedTestPass):
        bar.label = label
