"""Start-up and fixed costs of the default recipe: `python train.py` end to end, in a subprocess, as users run it.

Each run is `python train.py` with conf/train.yaml's defaults (GPT-2 124M from a Hub-layout weights file, the
frozen-feature cache, test on three splits, plots), `trainer.max_epochs=1` (epoch time is not the subject) and
the progress bars off. The child is this file in `--probe` mode: it stamps the wall clock at the phase boundaries
and then runs `spam_lightning.cli.train()`, which is all that train.py does. The stamps come from wrappers around
a few project functions and a Lightning callback added with a Hydra override (`+callbacks.startup_probe`); nothing
in the project is instrumented. The breakdown, from the parent's clock before it starts the process:

  python + train.py's imports    interpreter start, `import spam_lightning.cli` (Hydra, OmegaConf)
  config composed                Hydra parses the command line, composes conf/train.yaml, sets up logging
  training imports               `import spam_lightning.training.run` (torch, Lightning, torchmetrics, ...)
  trainer built                  data module, callbacks, loggers, Trainer (up to the model's constructor)
  weights loaded                 the model: GPT-2 built and its pretrained weights read (`build_gpt`)
  model ready                    the rest of SpamClassifier's constructor, data prepared (`prepare_data`)
  data ready                     splits set up (the check that the run trains something)
  fit started                    config.yaml written, Lightning's fit setup (up to on_fit_start)
  cache filled, first step       sanity check, the train split's frozen-feature cache fill, the first step
  (training)                     the rest of the epoch: not start-up (reported, not part of the subject)
  validation + checkpoints       after the last training step: validation (its cache fill), checkpoints
  test on three splits           `evaluate`: the best checkpoint on train, validation and test
  metrics.json                   the summary written
  plots/report                   test_scores.csv, the PNG plots, the results table
  exit                           until the process has exited (atexit, interpreter teardown)

With several `--checkout` folders (e.g. the code before a change, in a `git worktree`), the runs alternate
between them, `--repeats` times each, and the medians are printed side by side; metrics.json of the runs are
compared (without `time_seconds`), so a faster start-up that changed results shows up. The first round can be
dropped as a warm-up (`--warmup`: page cache, data preparation).

    python benchmarks/bench_startup.py --weights-file random --repeats 3 --checkout /tmp/startup_before --checkout .

`--weights-file random` writes a GPT-2 124M-shaped random `model.safetensors` in the Hub's layout into
--work-dir (OpenAI's weights cannot be downloaded everywhere); `--weights-file gpt2` uses the preset (the Hub).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
STAMPS_ENV = "BENCH_STARTUP_STAMPS"

# (stamp that ends the phase, the phase's name); a phase starts at the previous stamp.
PHASES = (
    ("imports_cli", "python + train.py's imports"),
    ("composed", "config composed"),
    ("imports_train", "training imports"),
    ("weights_start", "trainer built"),
    ("weights_loaded", "weights loaded"),
    ("model_ready", "model ready, data prepared"),
    ("data_ready", "data ready (splits set up)"),
    ("fit_start", "fit started"),
    ("first_step", "cache filled, first step"),
    ("last_step", "(training: rest of the epoch)"),
    ("fit_end", "validation + checkpoints"),
    ("tested", "test on three splits"),
    ("metrics_json", "metrics.json"),
    ("report", "plots/report, results table"),
    ("exit", "exit"),
)
START_UP = ("imports_cli", "composed", "imports_train", "weights_start", "weights_loaded", "model_ready")
START_UP += ("data_ready", "fit_start", "first_step")
WIND_DOWN = ("fit_end", "tested", "metrics_json", "report", "exit")


# ------------------------------------------------------------------------------------------------
# The child: stamps around `spam_lightning.cli.train()`
# ------------------------------------------------------------------------------------------------


def stamp(name: str) -> None:
    """Append `name wall-clock-time` to the stamps file (first stamp of a name wins in the parent)."""
    with open(os.environ[STAMPS_ENV], "a", encoding="utf-8") as f:
        f.write(f"{name} {time.time():.6f}\n")


def _after(fn: Any, name: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        stamp(name)
        return result

    return wrapper


def _around(fn: Any, before: str, after: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamp(before)
        result = fn(*args, **kwargs)
        stamp(after)
        return result

    return wrapper


def _stamping_callback() -> Any:
    from lightning.pytorch.callbacks import Callback

    class StartupProbe(Callback):
        """Stamps the first and last training step and the fit's start and end."""

        def __init__(self) -> None:
            self.steps = 0

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            stamp("fit_start")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self.steps += 1
            if self.steps == 1:
                stamp("first_step")
            stamp("last_step")  # the parent keeps the last one of this name

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            stamp("fit_end")

    return StartupProbe


def __getattr__(name: str) -> Any:  # `+callbacks.startup_probe._target_=bench_startup.StartupProbe`
    if name == "StartupProbe":
        return _stamping_callback()
    raise AttributeError(name)


def probe(overrides: list[str]) -> None:
    """What train.py does (`from spam_lightning.cli import train; train()`), with stamps. The stamps of the training
    run are put in once `spam_lightning.training.run` is imported, where the task imports it (train.py may start work
    before that import, which the probe must not move)."""
    import spam_lightning.cli as cli

    stamp("imports_cli")
    task = cli._train

    def _train(cfg: Any) -> Any:
        stamp("composed")
        sys.meta_path.insert(0, _AfterImport("spam_lightning.training.run", _instrument))
        result = task(cfg)
        stamp("report")
        return result

    cli._train = _train
    sys.argv = ["train.py", *overrides]
    cli.train()


def _instrument(train: Any) -> None:
    import spam_lightning.model.net as net

    stamp("imports_train")
    net.build_gpt = _around(net.build_gpt, "weights_start", "weights_loaded")
    train.build_model_and_fetch_data = _after(train.build_model_and_fetch_data, "model_ready")
    train._check_trains_something = _after(train._check_trains_something, "data_ready")
    train.evaluate = _after(train.evaluate, "tested")
    write = train.atomic_write_bytes

    def atomic_write_bytes(path: Path, data: bytes, *args: Any, **kwargs: Any) -> Any:
        result = write(path, data, *args, **kwargs)
        if Path(path).name == "metrics.json":
            stamp("metrics_json")
        return result

    train.atomic_write_bytes = atomic_write_bytes


class _AfterImport:
    """A meta path finder that calls `then(module)` once the module `name` has been imported."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader, then = spec.loader, self.then

        class Loader:
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                then(module)

        spec.loader = Loader()
        return spec


# ------------------------------------------------------------------------------------------------
# The parent
# ------------------------------------------------------------------------------------------------


def one_run(checkout: Path, overrides: list[str], work: Path, tag: str) -> tuple[dict[str, float], dict[str, Any]]:
    """One `python train.py` in `checkout`: the phase durations (s) and metrics.json."""
    stamps_file = work / f"stamps-{tag}.txt"
    stamps_file.unlink(missing_ok=True)
    run_name = f"run-{tag}"
    env = {
        **os.environ,
        STAMPS_ENV: str(stamps_file),
        "PYTHONPATH": os.pathsep.join([str(checkout / "src"), str(Path(__file__).resolve().parent)]),
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        *overrides,
        f"runs_dir={work / 'runs'}",
        f"run_name={run_name}",
        "+callbacks.startup_probe._target_=bench_startup.StartupProbe",
    ]
    start = time.time()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    end = time.time()
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"run {tag} in {checkout} failed with status {done.returncode}")
    stamps: dict[str, float] = {}
    for line in stamps_file.read_text(encoding="utf-8").splitlines():
        name, value = line.split()
        if name == "last_step" or name not in stamps:
            stamps[name] = float(value)
    stamps["exit"] = end
    phases, previous = {}, start
    for name, _ in PHASES:
        phases[name] = stamps[name] - previous
        previous = stamps[name]
    phases["start_up"] = stamps["first_step"] - start
    phases["wind_down"] = end - stamps["last_step"]
    phases["total"] = end - start
    metrics = json.loads((work / "runs" / run_name / "metrics.json").read_text(encoding="utf-8"))
    return phases, metrics


def _differing_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """metrics.json's top-level keys whose values differ (or that one lacks), but for the times and the path."""
    return {k for k in a.keys() | b.keys() if k not in ("time_seconds", "best_checkpoint") and a.get(k) != b.get(k)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", default=[], help="project folder(s) to time (default: this)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout, alternating")
    parser.add_argument("--warmup", action="store_true", help="one untimed round first")
    parser.add_argument("--weights-file", default="random", help="'random', a preset name or a .safetensors")
    parser.add_argument("--source", default=None, help="the UCI zip (default: ../shared copy, else download)")
    parser.add_argument("--tokenizer-file", default=None, help="gpt2.tiktoken (default: ../shared copy)")
    parser.add_argument("--epochs", type=int, default=1, help="trainer.max_epochs (default 1)")
    parser.add_argument("--work-dir", default="/tmp/bench_startup", help="weights, data, runs, stamps")
    parser.add_argument("--json", default=None, help="write all timings to this file")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkouts = [Path(c).resolve() for c in args.checkout] or [REPO]
    weights = args.weights_file
    if weights == "random":
        weights_path = work / "gpt2-random.safetensors"
        if not weights_path.is_file():
            sys.path.insert(0, str(REPO / "tests"))
            sys.path.insert(0, str(REPO / "src"))
            from helpers.local_internet import write_gpt2_safetensors

            write_gpt2_safetensors(weights_path, "gpt2")
        weights = str(weights_path)
    shared_zip = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
    shared_tokenizer = SHARED / "assets" / "gpt2.tiktoken"
    source = args.source or (str(shared_zip) if shared_zip.is_file() else None)
    tokenizer = args.tokenizer_file or (str(shared_tokenizer) if shared_tokenizer.is_file() else None)
    overrides = [
        f"model.pretrained={weights}",
        f"data.data_dir={work / 'data'}",
        *([f"data.source={source}"] if source else []),
        *([f"data.tokenizer_file={tokenizer}"] if tokenizer else []),
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    print(f"python train.py {' '.join(overrides)} runs_dir=... run_name=...", flush=True)
    rounds = range(-1 if args.warmup else 0, args.repeats)
    timings: dict[str, list[dict[str, float]]] = {str(c): [] for c in checkouts}
    metrics: dict[str, list[dict[str, Any]]] = {str(c): [] for c in checkouts}
    for r in rounds:
        # Alternate, and reverse the order every other round so neither checkout always runs first.
        order = checkouts if r % 2 == 0 else checkouts[::-1]
        for c in order:
            tag = f"{r}-{checkouts.index(c)}-{int(time.time())}"
            phases, m = one_run(c, overrides, work, tag)
            label = "warm-up" if r < 0 else f"round {r + 1}"
            print(f"{label}: {c}: start-up {phases['start_up']:.1f} s, wind-down {phases['wind_down']:.1f} s, "
                  f"total {phases['total']:.1f} s", flush=True)  # fmt: skip
            if r >= 0:
                timings[str(c)].append(phases)
                metrics[str(c)].append(m)
    load_after = os.getloadavg()

    names = [*(n for n, _ in PHASES), "start_up", "wind_down", "total"]
    labels = dict(PHASES) | {"start_up": "start-up: process start -> first step done"}
    labels |= {"wind_down": "wind-down: last step -> exit", "total": "total"}
    medians = {c: {n: statistics.median(t[n] for t in runs) for n in names} for c, runs in timings.items()}
    width = max(len(v) for v in labels.values()) + 2
    header = f"{'phase (median s, ' + str(args.repeats) + ' runs)':<{width}}" + "".join(
        f"{'[' + str(i) + ']':>10}" for i in range(len(checkouts))
    )
    print()
    for i, c in enumerate(checkouts):
        print(f"[{i}] {c}")
    print(header)
    for n in names:
        if n in ("start_up", "last_step"):
            print("-" * len(header))
        print(f"{labels[n]:<{width}}" + "".join(f"{medians[str(c)][n]:>10.2f}" for c in checkouts))
    reference = next(iter(metrics.values()))[0]
    differing = sorted(set().union(*(_differing_keys(reference, m) for runs in metrics.values() for m in runs)))
    same = not differing
    print(f"\nmetrics.json (without time_seconds, best_checkpoint) identical in all runs: {same}"
          + ("" if same else f" (differing keys: {', '.join(differing)})"))  # fmt: skip
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")  # fmt: skip
    result = {
        "overrides": overrides,
        "checkouts": [str(c) for c in checkouts],
        "timings": timings,
        "medians": medians,
        "metrics_identical": same,
        "load_average": {"before": load_before, "after": load_after},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        stamp("interpreter")
        probe(sys.argv[2:])
    else:
        main()
