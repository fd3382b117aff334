"""One training run, and many: everything that needs Lightning.

`run` (config -> data module, net, LightningModule, trainer -> fit, test, metrics.json; the DDP ranks' entry point),
`module` (SpamClassifier: freezing, the last-token loss, metrics, optimizer, the checkpoint record), `feature_cache`
(the frozen trunk's outputs, in memory and in the shared store on disk), `checkpoints` (atomic checkpoint IO, small
checkpoints, last.ckpt on a schedule), `runs` (run folders and their locks, the run's log and progress bars),
`trackers` (CSV, MLflow and W&B loggers), `ddp` (starting extra ranks), `sweeps` (multirun summary and the Optuna
sweeper) and `baseline` (the TF-IDF baseline on the same splits).
"""

import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError

# torchmetrics' optional text and audio back-ends, which Lightning's import of torchmetrics imports where installed
# (about a second on our CPUs, a third of Lightning's import) and training never uses.
UNUSED_METRIC_BACKENDS = frozenset({"transformers", "scipy"})


def _import_lightning() -> None:
    """Import Lightning (and with it torchmetrics) with UNUSED_METRIC_BACKENDS reported absent to the availability
    checks torchmetrics makes while it imports (lightning_utilities' `package_available` and `RequirementCache`).
    So a training process never imports transformers or scipy.signal; in it, torchmetrics' metrics that need them
    (BERTScore, InfoLM, the scipy-backed audio ones) say they are not installed. Every module of this package
    imports Lightning, so it runs first; a process that imported Lightning already keeps what it has."""
    if "lightning" in sys.modules or "torchmetrics" in sys.modules:
        return
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
        import lightning  # noqa: F401
    finally:
        checks._version, checks.package_available = version, available  # type: ignore[assignment]


_import_lightning()
