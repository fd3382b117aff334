"""One training run, and many: everything that needs Lightning.

`run` (config -> data module, net, LightningModule, trainer -> fit, test, metrics.json; the DDP ranks' entry point),
`module` (SpamClassifier: freezing, the last-token loss, metrics, optimizer, the checkpoint record), `feature_cache`
(the frozen trunk's outputs, in memory and in the shared store on disk), `checkpoints` (atomic checkpoint IO, small
checkpoints, last.ckpt on a schedule), `runs` (run folders and their locks, the run's log and progress bars),
`trackers` (CSV, MLflow and W&B loggers), `ddp` (starting extra ranks), `sweeps` (multirun summary and the Optuna
sweeper) and `baseline` (the TF-IDF baseline on the same splits).
"""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from types import ModuleType
from typing import Any

# torchmetrics' optional text and audio back-ends and its plotting, which torchmetrics imports where installed (about
# 1.3 s on our CPUs, a third of Lightning's import; Lightning imports torchmetrics) and training never uses (a run's
# plots are ours: inference/report.py imports matplotlib once the run has trained).
UNUSED_METRIC_BACKENDS = frozenset({"transformers", "scipy", "matplotlib"})


class _LeanMetricsImport(importlib.abc.MetaPathFinder):
    """Finds torchmetrics the first time it is imported (by Lightning, or by us) and runs its package with
    UNUSED_METRIC_BACKENDS reported absent to the availability checks it makes meanwhile (lightning_utilities'
    `package_available` and `RequirementCache`). A training process so imports neither transformers nor scipy.signal,
    and matplotlib only for its plots at the end; in it, torchmetrics' metrics that need them (BERTScore, InfoLM, the
    scipy-backed audio ones, `Metric.plot`) say they are not installed. The checks are as they were once torchmetrics
    is imported. Installed by importing this package; a process that imported torchmetrics before keeps what it has."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != "torchmetrics":
            return None
        sys.meta_path.remove(self)  # once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _BackendsHidden(spec.loader)
        return spec


class _BackendsHidden:
    """torchmetrics' own loader, with its module executed while the unused back-ends look absent."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # everything but exec_module: the loader's own
        return getattr(self.loader, name)

    def exec_module(self, module: ModuleType) -> None:
        import lightning_utilities.core.imports as checks

        version: Callable[[str], str] = checks._version
        available: Callable[[str], bool] = checks.package_available

        def hidden_version(name: str) -> str:
            if name in UNUSED_METRIC_BACKENDS:
                raise PackageNotFoundError(name)
            return version(name)

        def hidden_available(name: str) -> bool:
            return name not in UNUSED_METRIC_BACKENDS and available(name)

        checks._version, checks.package_available = hidden_version, hidden_available  # type: ignore[assignment]
        try:
            self.loader.exec_module(module)
        finally:
            checks._version, checks.package_available = version, available  # type: ignore[assignment]


if "torchmetrics" not in sys.modules and not any(isinstance(f, _LeanMetricsImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _LeanMetricsImport())
