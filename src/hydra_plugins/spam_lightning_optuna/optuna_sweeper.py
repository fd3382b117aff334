"""The Optuna sweeper as a Hydra plugin: `override /hydra/sweeper: spam_optuna` (conf/hparams_search/optuna.yaml).

Hydra instantiates sweepers only from classes defined under the `hydra_plugins` package, which it scans
at start-up: this module stays light (Optuna is imported when a search starts) and delegates all work to
`spam_lightning.training.sweeps.OptunaSearch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

import spam_lightning.training.sweeps as impl


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.search = impl.OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        return self.search.sweep(arguments)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="spam_optuna",
    node={"_target_": f"{__name__}.OptunaSweeper", **impl.DEFAULTS},
    provider="spam_lightning",
)
