"""One log for a run: our messages, Lightning's and Python warnings reach Hydra's handlers (console and train.log)."""

from __future__ import annotations

import logging
import textwrap
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Loggers that add their own console handler at import time when nobody has configured logging yet (this
# package's __init__, Lightning's), and stop propagating: under Hydra their records would miss train.log.
_SELF_HANDLED = ("spam_lightning", "lightning", "lightning.pytorch", "lightning.fabric")


def log_through_root() -> None:
    """Hand these loggers' records, and Python warnings, to the root logger's handlers once they exist
    (Hydra configures them when the job starts, after our imports ran)."""
    if not logging.getLogger().handlers:
        return
    for name in _SELF_HANDLED:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


# Lightning warnings that are false for this project, each with the reason.
FALSE_WARNINGS = (
    r".*your dataloader is not resumable",  # the data module skips the batches already trained (data.py)
    r"Experiment logs directory .* will be deleted",  # ResumableCSVLogger appends to metrics.csv
    r"Checkpoint directory .* exists and is not empty",  # a run directory holds one run only (rundir.py)
    r"Found \d+ module\(s\) in eval mode",  # the frozen part runs in eval mode on purpose (classifier.py)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, about torch; nothing to act on
)


def silence_false_warnings() -> None:
    for pattern in FALSE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def config_tree(cfg: DictConfig) -> str:
    """The composed config, resolved, as a tree: one branch a config group (data, model, trainer, ...), then the
    top-level values (print_config=true)."""
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    groups = {key: value for key, value in resolved.items() if isinstance(value, dict)}
    values = {key: value for key, value in resolved.items() if not isinstance(value, dict)}
    branches = [(name, OmegaConf.to_yaml(group)) for name, group in groups.items()]
    branches.append(("top level", OmegaConf.to_yaml(values)))
    lines = ["config"]
    for i, (name, text) in enumerate(branches):
        last = i == len(branches) - 1
        lines.append(("└── " if last else "├── ") + name)
        lines.append(textwrap.indent(text.rstrip(), "    " if last else "│   "))
    return "\n".join(lines)
