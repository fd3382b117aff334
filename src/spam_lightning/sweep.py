"""Sweeps (`python train.py -m ...`): failed jobs that do not end the sweep, and a summary table at the end.

- `run_job_in_sweep` (called by `train.py` in multirun): a job that raises is logged, leaves `failed.json`
  in its run directory and returns None, so that the sweeper goes on with the next job (Hydra's basic
  sweeper would re-raise the first failure once its batch is done, and skip the summary).
- `SweepSummary` (a Hydra callback, `hydra.callbacks` in conf/train.yaml): when the sweep ends, reads
  each job's `.hydra/overrides.yaml` with its `metrics.json` or `failed.json` and writes `summary.csv`
  and `summary.md` into the sweep directory: the overrides that differ between the jobs against their
  validation/test metrics and time, sorted by the monitored metric, failed jobs last.
- `exit_code()`: what `train.py` exits with afterwards: 1 when the summary counted failed jobs
  (`fail_on: any`, grids) or only failed jobs (`fail_on: all`, searches), else 0.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from spam_lightning.files import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# (column, split, metric) of metrics.json shown for every job.
METRIC_COLUMNS = (
    ("val_accuracy", "validation", "accuracy"),
    ("val_f1", "validation", "f1"),
    ("val_loss", "validation", "loss"),
    ("test_accuracy", "test", "accuracy"),
    ("test_f1", "test", "f1"),
    ("test_loss", "test", "loss"),
)
FAIL_ON = ("any", "all", "never")

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
        for column, split, metric in METRIC_COLUMNS:
            value = summary.get(split, {}).get(metric)
            if value is not None:
                result.metrics[column] = float(value)
        times = summary.get("time_seconds", {})
        result.seconds = round(sum(float(t) for t in times.values()), 1) if times else None
    else:
        result.status = "no metrics"
    return result


def _natural_key(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("/")]


def rank(results: list[JobResult], metric: str, mode: str) -> list[JobResult]:
    """Best first by metric (mode max or min); jobs without a value (failed, no metrics) last, by job."""
    scored = [r for r in results if r.value(metric) is not None]
    unscored = [r for r in results if r.value(metric) is None]
    scored.sort(key=lambda r: r.value(metric), reverse=mode == "max")
    return scored + unscored


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


def to_csv(results: list[JobResult], swept: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [name for name, _, _ in METRIC_COLUMNS]
    writer.writerow(["job", "status", *swept, *columns, "time_seconds", "run_dir", "error"])
    for r in results:
        writer.writerow(
            [
                r.job,
                r.status,
                *(r.overrides.get(k, "") for k in swept),
                *(_number(r.metrics.get(c)) for c in columns),
                "" if r.seconds is None else r.seconds,
                str(r.run_dir),
                r.error,
            ]
        )
    return out.getvalue()


def to_markdown(results: list[JobResult], swept: list[str], metric: str, mode: str, common: list[str]) -> str:
    columns = [name for name, _, _ in METRIC_COLUMNS]
    ok = sum(r.status == "ok" for r in results)
    failed = sum(r.status == "failed" for r in results)
    lines = [
        f"{len(results)} jobs: {ok} ok, {failed} failed, {len(results) - ok - failed} without metrics; "
        f"sorted by {metric} ({mode})",
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
            *(_number(r.metrics.get(c), 4) for c in columns),
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


def write_summary(sweep_dir: Path, metric: str = "val_accuracy", mode: str = "max") -> list[JobResult]:
    """Write summary.csv and summary.md into sweep_dir; returns the jobs, best first."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    results = rank(collect(sweep_dir), metric, mode)
    swept = swept_keys(results)
    markdown = to_markdown(results, swept, metric, mode, common_overrides(results, swept))
    atomic_write_bytes(sweep_dir / SUMMARY_CSV, to_csv(results, swept).encode())
    atomic_write_bytes(sweep_dir / SUMMARY_MD, markdown.encode())
    return results


class SweepSummary(Callback):
    """Hydra callback: the sweep summary (see the module docstring) when a multirun ends.

    metric: a column of the table (val_accuracy, val_f1, val_loss, test_*); mode: max | min.
    fail_on: any (exit 1 if any job failed) | all (exit 1 if no job succeeded) | never.
    """

    def __init__(self, metric: str = "val_accuracy", mode: str = "max", fail_on: str = "any") -> None:
        names = [name for name, _, _ in METRIC_COLUMNS]
        if metric not in names:
            raise ValueError(f"SweepSummary metric must be one of {names}, got {metric!r}")
        if fail_on not in FAIL_ON:
            raise ValueError(f"SweepSummary fail_on must be one of {list(FAIL_ON)}, got {fail_on!r}")
        self.metric, self.mode, self.fail_on = metric, mode, fail_on

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_summary, _last_fail_on
        sweep_dir = Path(config.hydra.sweep.dir)
        results = write_summary(sweep_dir, self.metric, self.mode)
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
