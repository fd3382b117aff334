"""Progress bars: Lightning's own (rich when installed, else tqdm), with each evaluation pass named.

Lightning labels every `trainer.test` pass "Testing"; a run evaluates three splits in a row, so ours say which one
(`name_test_pass`).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE  # here in Lightning 2.4-2.6


class _NamedTestPass:
    label = "Testing"

    @property
    def test_description(self) -> str:
        return self.label


class NamedRichProgressBar(_NamedTestPass, RichProgressBar):
    pass


class NamedTQDMProgressBar(_NamedTestPass, TQDMProgressBar):
    pass


def progress_bar() -> ProgressBar:
    """The bar Lightning would pick by default, with named test passes."""
    return NamedRichProgressBar() if _RICH_AVAILABLE else NamedTQDMProgressBar()


def name_test_pass(trainer: L.Trainer, label: str) -> None:
    """Label the progress bar of the next `trainer.test` call."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, _NamedTestPass):
        bar.label = label
