"""Sweeps share the frozen trunk: a grid over model.lr of the default recipe, as four independent runs against one
sweep with the trunk cache on disk (model.cache_dir), in one run of this script on one machine.

(a) independent   `python train.py model.lr=X` once per learning rate, each its own process (the trunk computed
                  in every run, in memory)
(b) shared        `python train.py -m model.lr=X,Y,... model.cache_dir=FRESH_FOLDER`: the first job computes the
                  trunk and writes it; the others read it (memory-mapped)

Both start from the same 124M-shaped random weights file in the Hub's layout (OpenAI's weights cannot be
downloaded here; timings do not depend on the values), the UCI zip and the tokenizer from ../shared. Each job's
metrics.json must be the same in (a) and (b): the script compares every validation and test metric and prints the
largest difference.

    python benchmarks/bench_sweep.py                      # 4 learning rates, the default recipe (5 epochs)
    python benchmarks/bench_sweep.py --lrs 5e-5,1e-4 trainer.max_epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))


def run(command: list[str], log: Path) -> float:
    """Run a command (its output to `log`); its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return seconds


def metrics(run_dir: Path) -> dict[str, float]:
    """Every numeric validation and test metric of a run's metrics.json, as 'split/name'."""
    saved = json.loads((run_dir / "metrics.json").read_text())
    return {
        f"{split}/{name}": value
        for split in ("validation", "test")
        for name, value in saved[split].items()
        if isinstance(value, int | float)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lrs", default="5e-5,1e-4,2e-4,4e-4", help="the grid over model.lr")
    parser.add_argument("--work-dir", default="runs/bench_sweep", help="weights, data, runs, cache (emptied first)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. trainer.max_epochs=1")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.local_internet import write_gpt2_safetensors

    from spam_lightning.model.gpt import make_config

    weights = write_gpt2_safetensors(work / "gpt2-random.safetensors", make_config("gpt2"))
    lrs = args.lrs.split(",")
    common = [
        f"model.pretrained={weights}",
        f"data.source={SHARED / 'data' / 'sms_spam_collection' / 'sms+spam+collection.zip'}",
        f"data.tokenizer_file={SHARED / 'assets' / 'gpt2.tiktoken'}",
        f"data.data_dir={work / 'data'}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    train = [sys.executable, "train.py"]
    print(f"load average before: {os.getloadavg()}; {len(lrs)} jobs, model.lr in {lrs}", flush=True)
    # The data splits are written once beforehand, so neither side pays for them.
    run([*train, *common, "trainer.max_steps=1", "test_after_fit=false", f"runs_dir={work / 'warmup'}"], work / "w.log")

    independent = {}
    for lr in lrs:
        one = [*train, *common, f"model.lr={lr}", f"runs_dir={work / 'a'}", f"run_name=lr{lr}"]
        seconds = run(one, work / f"a{lr}.log")
        independent[lr] = seconds
        print(f"(a) independent run model.lr={lr}: {seconds:.1f} s", flush=True)
    sweep = [*train, "-m", *common, f"model.lr={','.join(lrs)}", f"model.cache_dir={work / 'cache'}"]
    shared = run([*sweep, f"runs_dir={work / 'b'}", "run_name=sweep"], work / "b.log")
    print(f"(b) one sweep, trunk shared on disk: {shared:.1f} s", flush=True)

    job_dirs = {
        yaml.safe_load((d / "config.yaml").read_text())["model"]["lr"]: d
        for d in (work / "b" / "sweep").iterdir()
        if (d / "metrics.json").is_file()
    }
    worst = 0.0
    for lr in lrs:
        ours, theirs = metrics(work / "a" / f"lr{lr}"), metrics(job_dirs[float(lr)])
        assert ours.keys() == theirs.keys(), (ours.keys(), theirs.keys())
        worst = max(worst, *(abs(ours[k] - theirs[k]) for k in ours))
    total = sum(independent.values())
    print(f"load average after: {os.getloadavg()}")
    print(f"{'':40s} {'seconds':>9s}")
    for lr, seconds in independent.items():
        print(f"{'(a) independent, model.lr=' + lr:40s} {seconds:9.1f}")
    print(f"{'(a) all ' + str(len(lrs)) + ' runs':40s} {total:9.1f}")
    print(f"{'(b) one sweep, shared trunk':40s} {shared:9.1f}")
    print(f"(b) vs (a): {total / shared:.2f}x faster; largest metric difference between (a) and (b): {worst:.3g}")


if __name__ == "__main__":
    main()
