"""Optuna hyperparameter search behind `python train.py -m hparams_search=optuna` (a Hydra sweeper).

Hydra's own Optuna sweeper plugin pins optuna<3 and its SQLite storage fails with SQLAlchemy 2, so this
one drives Optuna (>=4, the `search` extra) directly with ask/tell. Hydra only accepts sweepers defined
under the `hydra_plugins` package: `hydra_plugins.spam_lightning_optuna` holds the thin plugin class and
its config (group hydra/sweeper, option spam_optuna); everything else is here.

- The search space is `hydra.sweeper.params` in Hydra's sweep syntax (conf/hparams_search/optuna.yaml):
  `choice(a,b)` and `range(...)` are categorical, `interval(lo,hi)` uniform floats,
  `int(interval(lo,hi))` uniform integers, `tag(log, interval(lo,hi))` log-uniform. Sweep overrides
  on the command line join the space; plain overrides go to every trial and remove their key from it.
- Each trial is one Hydra job through the configured launcher, in `<sweep dir>/<trial number>`; its
  return value (validation accuracy) is the objective. A job that fails or returns None/NaN is told
  to Optuna as FAIL and the search goes on.
- The study lives in `<sweep dir>/optuna.db` (SQLite; `storage` to override) and is loaded if it
  exists: `n_trials` counts the finished (COMPLETE + FAIL) trials of the study, so running the same
  command again (same run_name) continues the search up to n_trials. Trials left RUNNING by a crashed
  search are marked FAIL, not counted, and re-run first with the same parameters.
- The study records its search space and fixed overrides; continuing it with different ones is refused.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from spam_lightning.errors import MissingExtraError, require_extra
from spam_lightning.sweep import FAILED_FILE, METRICS_FILE, write_failure

log = logging.getLogger(__name__)

DB_FILE = "optuna.db"
RESULTS_FILE = "optimization_results.yaml"
_INTERRUPTED = "interrupted_trials"  # study user attr: numbers of trials a crash left RUNNING
_SPACE = "search_space"  # study user attr: {key: distribution json}
_FIXED = "fixed_overrides"  # study user attr: the overrides every trial gets

# Overrides that only say where a checked file comes from (its bytes are verified, so results cannot change):
# they may differ between the commands of one search, e.g. data.tokenizer_file given once, offline.
_LOCATION_KEYS = ("data.tokenizer_file", "data.tokenizer_url", "data.urls")

# What the plugin's config accepts (hydra/sweeper=spam_optuna); conf/hparams_search/optuna.yaml sets them.
DEFAULTS: dict[str, Any] = {
    "direction": "maximize",  # maximize | minimize the jobs' return value (train.py: validation accuracy)
    "n_trials": 20,  # finished trials (COMPLETE + FAIL) the study should hold when the search ends
    "n_jobs": 1,  # trials asked for and launched together (parallel launchers: joblib, submitit)
    "seed": 123,  # TPESampler seed
    "n_startup_trials": 5,  # random trials before TPE starts modelling
    "study_name": "spam_lightning",
    "storage": None,  # null: sqlite:///<sweep dir>/optuna.db
    "params": {},  # search space: key -> Hydra sweep expression
}


class SearchMismatchError(CompactHydraException):
    """A stored study continued with another search space or other fixed overrides."""


def _import_optuna() -> Any:
    try:
        require_extra("hparams_search=optuna", "search", "optuna")
    except MissingExtraError as err:
        raise SystemExit(f"error: {err}") from None  # past Hydra's error report, which adds lines to it
    import optuna

    return optuna


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (choice, range, interval, tag(log, interval))."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.is_choice_sweep() or override.is_range_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_interval_sweep():
        value = override.value()
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise HydraException(f"OptunaSweeper: {override.input_line!r} is not a choice, range or interval sweep")


def search_space(
    params: dict[str, str], arguments: Sequence[str], parser: OverridesParser
) -> tuple[dict[str, Any], list[str]]:
    """(distributions by key, fixed overrides) from the configured params and the command line."""
    space: dict[str, Any] = {}
    for key, expression in params.items():
        space[key] = distribution(parser.parse_override(f"{key}={expression}"))
    fixed = []
    for override in parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            space.pop(key, None)  # fixed on the command line
            fixed.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    if not space:
        raise HydraException("OptunaSweeper: empty search space (hydra.sweeper.params)")
    return space, fixed


def example(dist: Any) -> Any:
    """A value of a distribution (its first choice, or its low end), to check that trials compose."""
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


def format_override(key: str, value: Any) -> str:
    """`key=value` as Hydra parses it back: floats in full precision, odd strings quoted."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, str) and not re.fullmatch(r"[\w./:+-]+", value):
        quoted = value.replace("'", "\\'")
        return f"{key}='{quoted}'"
    return f"{key}={value}"


class OptunaSearch:
    """The sweeper's work; `hydra_plugins.spam_lightning_optuna.optuna_sweeper.OptunaSweeper` wraps it."""

    def __init__(self, **settings: Any) -> None:
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise HydraException(f"OptunaSweeper: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        s = {**DEFAULTS, **settings}
        if s["direction"] not in ("maximize", "minimize"):
            raise HydraException(f"OptunaSweeper: direction must be maximize or minimize, got {s['direction']!r}")
        if int(s["n_trials"]) < 1 or int(s["n_jobs"]) < 1:
            raise HydraException("OptunaSweeper: n_trials and n_jobs must be >= 1")
        self.direction: str = s["direction"]
        self.n_trials = int(s["n_trials"])
        self.n_jobs = int(s["n_jobs"])
        self.seed: int | None = s["seed"]
        self.n_startup_trials = int(s["n_startup_trials"])
        self.study_name: str = s["study_name"]
        self.storage: str | None = s["storage"]
        params = s["params"] or {}
        if isinstance(params, DictConfig):
            params = OmegaConf.to_container(params, resolve=True)
        self.params: dict[str, str] = {str(k): str(v) for k, v in params.items()}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        optuna = _import_optuna()
        from optuna.trial import TrialState

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = search_space(self.params, arguments, parser)

        # A misspelt key or a bad value fails here, before a study is stored.
        self.validate_batch_is_legal([[*fixed, *(format_override(k, example(d)) for k, d in space.items())]])
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = self.storage or f"sqlite:///{sweep_dir / DB_FILE}"
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, direction=self.direction, load_if_exists=True
        )
        self._check_same_search(study, space, fixed, storage)
        self._recover_interrupted(study, sweep_dir)
        # Seeded by the trials already made: a continued search draws new points, and stays reproducible.
        seed = None if self.seed is None else int(self.seed) + len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        log.info(
            "study %r in %s: %d of %d trials finished", study.study_name, storage, self._finished(study), self.n_trials
        )

        returns: list[Sequence[JobReturn]] = []
        while (done := self._finished(study)) < self.n_trials:
            trials = [study.ask(fixed_distributions=space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed, *(format_override(k, v) for k, v in t.params.items())] for t in trials]
            try:
                self.validate_batch_is_legal(batch)  # a config error ends the search, before any job starts
            except Exception:
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL)
                raise
            numbers = [t.number for t in trials]
            if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
                results = list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
            else:  # another process asked in between: keep job number == trial number
                results = [self.launcher.launch([b], initial_job_idx=n)[0] for b, n in zip(batch, numbers, strict=True)]
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
            returns.append(results)
        self._report(study, sweep_dir)
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.hydra_context is not None and self.config is not None
        for overrides in batch:
            self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides)
            )

    # -- the study ---------------------------------------------------------------------------------

    @staticmethod
    def _finished(study: Any) -> int:
        from optuna.trial import TrialState

        interrupted = set(study.user_attrs.get(_INTERRUPTED, []))
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        return sum(t.number not in interrupted for t in trials)

    def _check_same_search(self, study: Any, space: dict[str, Any], fixed: list[str], storage: str) -> None:
        from optuna.distributions import distribution_to_json

        ours = {key: distribution_to_json(d) for key, d in sorted(space.items())}
        if _SPACE not in study.user_attrs:
            study.set_user_attr(_SPACE, ours)
            study.set_user_attr(_FIXED, fixed)
            return
        theirs, their_fixed = study.user_attrs[_SPACE], _results_relevant(study.user_attrs.get(_FIXED, []))
        fixed = _results_relevant(fixed)
        differences = [
            *(
                f"  {key}: {theirs.get(key)} in the study, {ours.get(key)} now"
                for key in sorted({*theirs, *ours})
                if theirs.get(key) != ours.get(key)
            ),
            *(f"  override {o!r} only in the study" for o in their_fixed if o not in fixed),
            *(f"  override {o!r} only now" for o in fixed if o not in their_fixed),
        ]
        if differences:
            raise SearchMismatchError(
                f"the study {self.study_name!r} in {storage} was made for another search:\n"
                + "\n".join(differences)
                + "\ncontinue it with the same settings, or start a new search with another run_name=NAME"
            )

    @staticmethod
    def _recover_interrupted(study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not stale:
            return
        interrupted = list(study.user_attrs.get(_INTERRUPTED, []))
        for trial in stale:
            log.warning("trial %d was left running by an earlier search: marked FAIL, re-run first", trial.number)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params)
            interrupted.append(trial.number)
            job_dir = sweep_dir / str(trial.number)  # the default hydra.sweep.subdir
            if job_dir.is_dir() and not (job_dir / METRICS_FILE).is_file():
                write_failure(job_dir, "interrupted: the search stopped during this trial; it ran again as a new trial")
        study.set_user_attr(_INTERRUPTED, interrupted)

    def _tell(self, study: Any, trial: Any, result: JobReturn) -> None:
        from optuna.trial import TrialState

        value = result._return_value if result.status == JobStatus.COMPLETED else None
        hydra_cfg = getattr(result, "hydra_cfg", None)
        job_dir = Path(str(hydra_cfg.hydra.runtime.output_dir)) if hydra_cfg is not None else None
        if job_dir is not None:
            trial.set_user_attr("job_dir", str(job_dir))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            study.tell(trial, float(value))
            log.info("trial %d: %s = %s", trial.number, trial.params, value)
            return
        if result.status == JobStatus.FAILED:
            error = f"{type(result._return_value).__name__}: {result._return_value}"
        elif job_dir is not None and (job_dir / FAILED_FILE).is_file():
            error = json.loads((job_dir / FAILED_FILE).read_text()).get("error", "")
        else:
            error = f"the job returned {value!r}, not a number"
        trial.set_user_attr("error", error[:2000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s; the search goes on", trial.number, error.splitlines()[0][:300])

    def _report(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {
            "study_name": study.study_name,
            "direction": self.direction,
            "n_trials": len(study.trials),
            "n_complete": len(complete),
            "n_failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        }
        if complete:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info("best trial %d: value %s with %s", best.number, best.value, best.params)
        else:
            log.error("no trial of study %r completed", study.study_name)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)


def _results_relevant(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _LOCATION_KEYS]
