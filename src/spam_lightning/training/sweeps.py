"""Sweeps (`python train.py -m ...`): failed jobs that do not end the sweep, and a summary table at the end.

- `run_job_in_sweep` (called by `train.py` in multirun): a job that raises is logged, leaves `failed.json`
  in its run directory and returns None, so that the sweeper goes on with the next job (Hydra's basic
  sweeper would re-raise the first failure once its batch is done, and skip the summary).
- `SweepSummary` (a Hydra callback, `hydra.callbacks` in conf/train.yaml): when the sweep ends, reads
  each job's `.hydra/overrides.yaml` with its `metrics.json` or `failed.json` and writes `summary.csv`
  and `summary.md` into the sweep directory: the overrides that differ between the jobs against their
  validation/test metrics and time, best first by `optimized_metric`, failed jobs last.
- `optimized_metric` (conf/train.yaml, as in lightning-hydra-template): the key of metrics.json that a sweep
  optimises, `split/metric` (`validation/accuracy`, `validation/loss`, ...). Its direction is the metric's own
  (loss: minimize; accuracy, precision, recall, f1, auroc: maximize); a sweeper direction that contradicts it is
  refused before any job runs.
- `exit_code()`: what `train.py` exits with afterwards: 1 when the summary counted failed jobs
  (`fail_on: any`, grids) or only failed jobs (`fail_on: all`, searches), else 0.

Optuna hyperparameter search behind `python train.py -m hparams_search=optuna` (a Hydra sweeper).

Hydra's own Optuna sweeper plugin pins optuna<3 and its SQLite storage fails with SQLAlchemy 2, so this
one drives Optuna (>=4, the `search` extra) directly with ask/tell. Hydra only accepts sweepers defined
under the `hydra_plugins` package: `hydra_plugins.spam_lightning_optuna` holds the thin plugin class and
its config (group hydra/sweeper, option spam_optuna); everything else is here.

- The search space is `hydra.sweeper.params` in Hydra's sweep syntax (conf/hparams_search/optuna.yaml):
  `choice(a,b)` and `range(...)` are categorical, `interval(lo,hi)` uniform floats,
  `int(interval(lo,hi))` uniform integers, `tag(log, interval(lo,hi))` log-uniform. Sweep overrides
  on the command line join the space; plain overrides go to every trial and remove their key from it.
- Each trial is one Hydra job through the configured launcher, in `<sweep dir>/<trial number>`; its
  return value (its `optimized_metric`) is the objective. A job that fails or returns None/NaN is told
  to Optuna as FAIL and the search goes on.
- The study lives in `<sweep dir>/optuna.db` (SQLite; `storage` to override) and is loaded if it
  exists: `n_trials` counts the finished (COMPLETE + FAIL) trials of the study, so running the same
  command again (same run_name) continues the search up to n_trials. Trials left RUNNING by a crashed
  search are marked FAIL, not counted, and re-run first with the same parameters.
- The study records its search space and fixed overrides; continuing it with different ones is refused.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from spam_lightning.errors import ConfigError, MissingExtraError, require_extra
from spam_lightning.files import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# What `optimized_metric` may name: `split/metric` of metrics.json (the splits of spam_lightning.data.tables.SPLITS,
# the metrics of every model, binary or not), with the direction in which the metric is better.
OBJECTIVE_SPLITS = ("train", "validation", "test")
OBJECTIVE_DIRECTIONS = {
    "accuracy": "maximize",
    "precision": "maximize",
    "recall": "maximize",
    "f1": "maximize",
    "auroc": "maximize",
    "loss": "minimize",
}
DEFAULT_OBJECTIVE = "validation/accuracy"
# The columns of metrics.json shown for every job (the optimized metric is added when it is not among them).
METRIC_COLUMNS = {
    "validation/accuracy": "val_accuracy",
    "validation/f1": "val_f1",
    "validation/loss": "val_loss",
    "test/accuracy": "test_accuracy",
    "test/f1": "test_f1",
    "test/loss": "test_loss",
}
FAIL_ON = ("any", "all", "never")


def objective_keys() -> list[str]:
    return [f"{split}/{metric}" for split in OBJECTIVE_SPLITS for metric in OBJECTIVE_DIRECTIONS]


def objective_direction(key: str, direction: str | None = None) -> str:
    """The direction (maximize | minimize) of `optimized_metric=key`; a ConfigError for an unknown key, or for a
    configured `direction` (hydra.sweeper.direction) that would optimise the metric the wrong way."""
    split, _, metric = str(key).partition("/")
    if split not in OBJECTIVE_SPLITS or metric not in OBJECTIVE_DIRECTIONS:
        raise ConfigError(f"optimized_metric={key}: not a metric of metrics.json; known: {', '.join(objective_keys())}")
    natural = OBJECTIVE_DIRECTIONS[metric]
    if direction is not None and direction != natural:
        better = "higher" if natural == "maximize" else "lower"
        raise ConfigError(
            f"hydra.sweeper.direction={direction} with optimized_metric={key}, which is better {better}: "
            f"use hydra.sweeper.direction={natural} (or leave it out)"
        )
    return natural


def objective_value(metrics: dict[str, Any], key: str) -> float | None:
    """The value of `optimized_metric=key` in a run's metrics.json contents (None when it has none)."""
    split, _, metric = key.partition("/")
    value = (metrics.get(split) or {}).get(metric)
    return None if value is None else float(value)


def column_name(key: str) -> str:
    """A metrics.json key as the summary's column: validation/auroc -> val_auroc."""
    return METRIC_COLUMNS.get(key) or key.replace("validation/", "val/").replace("/", "_")


_last_summary: list[JobResult] | None = None
_last_fail_on = "any"


def run_job_in_sweep(task: Callable[[], Any], run_dir: Path) -> Any:
    """Run one sweep job: its result, or None (and `failed.json` in run_dir) if it raised an Exception."""
    failed_file = run_dir / FAILED_FILE
    failed_file.unlink(missing_ok=True)  # from an earlier sweep into the same folder
    try:
        return task()
    except Exception as err:
        log.exception("job in %s failed; the sweep goes on with the next job", run_dir)
        write_failure(run_dir, err)
        return None


def write_failure(run_dir: Path, err: BaseException | str) -> None:
    """failed.json: the error (the innermost cause of an exception, on one line) and its traceback."""
    if isinstance(err, str):
        record = {"error": err, "traceback": ""}
    else:
        root = err
        while root.__cause__ is not None:  # e.g. Hydra's InstantiationException around the real error
            root = root.__cause__
        record = {
            "error": " ".join(f"{type(root).__name__}: {root}".split()),
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        }
    atomic_write_bytes(run_dir / FAILED_FILE, json.dumps(record, indent=2).encode())


@dataclass
class JobResult:
    job: str  # the job's folder, relative to the sweep directory (the job number by default)
    run_dir: Path
    overrides: dict[str, str]
    status: str  # ok | failed | no metrics (interrupted, test_after_fit=false, or still running)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str = ""

    def value(self, metric: str) -> float | None:
        number = self.metrics.get(metric)
        return None if number is None or math.isnan(number) else number


def collect(sweep_dir: Path) -> list[JobResult]:
    """Every job under sweep_dir (a folder with .hydra/overrides.yaml), in job-number order."""
    results = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        if run_dir == sweep_dir:
            continue
        results.append(_read_job(sweep_dir, run_dir, overrides_file))
    return sorted(results, key=lambda r: _natural_key(r.job))


def _read_job(sweep_dir: Path, run_dir: Path, overrides_file: Path) -> JobResult:
    overrides = {}
    for item in yaml.safe_load(overrides_file.read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    result = JobResult(job=run_dir.relative_to(sweep_dir).as_posix(), run_dir=run_dir, overrides=overrides, status="")
    failed, metrics = run_dir / FAILED_FILE, run_dir / METRICS_FILE
    if failed.is_file():
        result.status = "failed"
        result.error = json.loads(failed.read_text()).get("error", "")
    elif metrics.is_file():
        summary = json.loads(metrics.read_text())
        result.status = "ok"
        for key in objective_keys():
            value = objective_value(summary, key)
            if value is not None:
                result.metrics[key] = value
        times = summary.get("time_seconds", {})
        result.seconds = round(sum(float(t) for t in times.values()), 1) if times else None
    else:
        result.status = "no metrics"
    return result


def _natural_key(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("/")]


def rank(results: list[JobResult], metric: str, direction: str) -> list[JobResult]:
    """Best first by the metrics.json key `metric` (direction maximize or minimize); jobs without a value (failed,
    no metrics) last, by job."""
    scored = [r for r in results if r.value(metric) is not None]
    unscored = [r for r in results if r.value(metric) is None]
    scored.sort(key=lambda r: r.value(metric), reverse=direction == "maximize")
    return scored + unscored


def shown_metrics(metric: str) -> list[str]:
    """The metrics.json keys the summary shows: METRIC_COLUMNS, and the optimized metric."""
    return [*METRIC_COLUMNS, *([] if metric in METRIC_COLUMNS else [metric])]


def swept_keys(results: list[JobResult]) -> list[str]:
    """The override keys whose values differ between the jobs (all keys when there is a single job)."""
    keys: dict[str, None] = {}
    for r in results:
        keys.update(dict.fromkeys(r.overrides))
    if len(results) <= 1:
        return list(keys)
    return [k for k in keys if len({r.overrides.get(k) for r in results}) > 1]


def common_overrides(results: list[JobResult], swept: list[str]) -> list[str]:
    if not results:
        return []
    return [f"{k}={v}" for k, v in results[0].overrides.items() if k not in swept]


def to_csv(results: list[JobResult], swept: list[str], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job", "status", *swept, *map(column_name, keys), "time_seconds", "run_dir", "error"])
    for r in results:
        writer.writerow(
            [
                r.job,
                r.status,
                *(r.overrides.get(k, "") for k in swept),
                *(_number(r.metrics.get(k)) for k in keys),
                "" if r.seconds is None else r.seconds,
                str(r.run_dir),
                r.error,
            ]
        )
    return out.getvalue()


def to_markdown(results: list[JobResult], swept: list[str], metric: str, direction: str, common: list[str]) -> str:
    keys = shown_metrics(metric)
    columns = [column_name(k) for k in keys]
    ok = sum(r.status == "ok" for r in results)
    failed = sum(r.status == "failed" for r in results)
    lines = [
        f"{len(results)} jobs: {ok} ok, {failed} failed, {len(results) - ok - failed} without metrics; "
        f"best first by {metric} ({direction})",
        "",
    ]
    if common:
        lines += ["Common overrides: " + " ".join(f"`{c}`" for c in common), ""]
    header = ["job", *swept, *columns, "time (s)", "status"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if h in (*columns, "time (s)") else "---" for h in header) + "|")
    for r in results:
        status = f"failed: {r.error}" if r.status == "failed" else r.status
        cells = [
            r.job,
            *(_short(r.overrides.get(k, "")) for k in swept),
            *(_number(r.metrics.get(k), 4) for k in keys),
            "" if r.seconds is None else f"{r.seconds:.1f}",
            _truncate(status, 120),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _short(value: str) -> str:
    """Override values as the table shows them: floats from a search to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if "." in value and len(value) > 8 else value


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def write_summary(sweep_dir: Path, metric: str = DEFAULT_OBJECTIVE, direction: str | None = None) -> list[JobResult]:
    """Write summary.csv and summary.md into sweep_dir, best first by the metrics.json key `metric` (in its own
    direction; a `direction` that contradicts it is a ConfigError); returns the jobs, best first."""
    direction = objective_direction(metric, direction)
    results = rank(collect(sweep_dir), metric, direction)
    swept = swept_keys(results)
    markdown = to_markdown(results, swept, metric, direction, common_overrides(results, swept))
    atomic_write_bytes(sweep_dir / SUMMARY_CSV, to_csv(results, swept, shown_metrics(metric)).encode())
    atomic_write_bytes(sweep_dir / SUMMARY_MD, markdown.encode())
    return results


def checked_objective(metric: str | None, direction: str | None) -> tuple[str, str]:
    """(optimized_metric, its direction), checked against a configured direction (hydra.sweeper.direction); a bad
    value ends the command with one `error:` line."""
    metric = str(metric or DEFAULT_OBJECTIVE)
    try:
        return metric, objective_direction(metric, direction)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None  # past Hydra's error report, which adds lines to it


class SweepSummary(Callback):
    """Hydra callback: the sweep summary (see the module docstring) when a multirun ends, best first by
    `optimized_metric` in its direction.

    Made from conf/train.yaml when Hydra starts, before any run or sweep folder exists: a misspelt
    optimized_metric, or a sweeper direction that contradicts it, is refused there.
    fail_on: any (exit 1 if any job failed) | all (exit 1 if no job succeeded) | never.
    """

    def __init__(
        self, optimized_metric: str = DEFAULT_OBJECTIVE, direction: str | None = None, fail_on: str = "any"
    ) -> None:
        if fail_on not in FAIL_ON:
            raise ValueError(f"SweepSummary fail_on must be one of {list(FAIL_ON)}, got {fail_on!r}")
        self.metric, self.direction = checked_objective(optimized_metric, direction)
        self.fail_on = fail_on

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_summary, _last_fail_on
        sweep_dir = Path(config.hydra.sweep.dir)
        results = write_summary(sweep_dir, self.metric, self.direction)
        _last_summary, _last_fail_on = results, self.fail_on
        markdown = (sweep_dir / SUMMARY_MD).read_text(encoding="utf-8")
        log.info("sweep summary (%s, %s):\n%s", sweep_dir / SUMMARY_MD, sweep_dir / SUMMARY_CSV, markdown)
        failed = [r.job for r in results if r.status == "failed"]
        if failed:
            log.error("%d of %d jobs failed: %s (see failed.json in their folders)", len(failed), len(results), failed)


def exit_code() -> int:
    """1 if the last sweep summary of this process had failures that its fail_on counts, else 0."""
    if not _last_summary:
        return 0
    failed = sum(r.status == "failed" for r in _last_summary)
    if _last_fail_on == "any":
        return int(failed > 0)
    if _last_fail_on == "all":
        return int(failed == len(_last_summary))
    return 0


DB_FILE = "optuna.db"
RESULTS_FILE = "optimization_results.yaml"
_INTERRUPTED = "interrupted_trials"  # study user attr: numbers of trials a crash left RUNNING
_SPACE = "search_space"  # study user attr: {key: distribution json}
_FIXED = "fixed_overrides"  # study user attr: the overrides every trial gets
_OBJECTIVE = "optimized_metric"  # study user attr: the metrics.json key its values are

# Overrides that only say where a checked file comes from (its bytes are verified, so results cannot change):
# they may differ between the commands of one search, e.g. data.tokenizer_file given once, offline.
_LOCATION_KEYS = ("data.tokenizer_file", "data.tokenizer_url", "data.urls")

# What the plugin's config accepts (hydra/sweeper=spam_optuna); conf/hparams_search/optuna.yaml sets them.
DEFAULTS: dict[str, Any] = {
    "direction": None,  # maximize | minimize the jobs' return value (optimized_metric); null: the metric's own
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
        if s["direction"] not in ("maximize", "minimize", None):
            raise HydraException(f"OptunaSweeper: direction must be maximize or minimize, got {s['direction']!r}")
        if int(s["n_trials"]) < 1 or int(s["n_jobs"]) < 1:
            raise HydraException("OptunaSweeper: n_trials and n_jobs must be >= 1")
        self.direction: str | None = s["direction"]
        self.metric = DEFAULT_OBJECTIVE
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
        self.metric, self.direction = checked_objective(config.get("optimized_metric"), self.direction)
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
        self._check_same_objective(study, storage)
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

    def _check_same_objective(self, study: Any, storage: str) -> None:
        """A study's values are those of one metric: continuing it with another optimized_metric is refused."""
        theirs = study.user_attrs.get(_OBJECTIVE)
        if theirs is None and study.trials:  # a study made before the setting: validation accuracy
            theirs = DEFAULT_OBJECTIVE
        if theirs is not None and theirs != self.metric:
            raise SearchMismatchError(
                f"the study {self.study_name!r} in {storage} optimises optimized_metric={theirs}, not {self.metric}: "
                "continue it with the same metric, or start a new search with another run_name=NAME"
            )
        study.set_user_attr(_OBJECTIVE, self.metric)

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
            "optimized_metric": self.metric,
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
