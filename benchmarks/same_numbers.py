"""Same numbers before and after a change of the code: the runs users make, their metrics, predictions and exports.

Runs, in the checkout given by --code (its src/ first on PYTHONPATH, its train.py and configs), with this venv:

  smoke   `python train.py experiment=smoke` (tiny random model, the SMS data, one epoch of 20 steps), then predict on
          the test split, evaluate it, export it (format=hf and format=onnx)
  book    `python train.py experiment=book` on a 124M-shaped random weights file in the Hub's layout (one epoch of 30
          steps and the validation split: the shipped recipe's code paths at the real size; no test phase, which
          takes a 2-core CPU many minutes at 124M), then predict 40 texts and export
  csv3    `python train.py data=csv` on a 3-class CSV made from the SMS data (ham / spam with a digit / other spam),
          tiny model, then predict and evaluate

and writes each run's metrics.json, predictions (JSON lines), evaluation.json and the exports' records and weight
hashes into --out. `--compare A B` prints every value that differs between two such folders (timings, paths and
dates left out) and exits 1 if any does.

    python benchmarks/same_numbers.py --code /tmp/before --out /tmp/numbers-before
    python benchmarks/same_numbers.py --code . --out /tmp/numbers-after
    python benchmarks/same_numbers.py --compare /tmp/numbers-before /tmp/numbers-after
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
ZIP = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
TSV = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
TIKTOKEN = SHARED / "assets" / "gpt2.tiktoken"
VOLATILE = re.compile(r"(seconds|time|_s$|date|path|dir|file|checkpoint|created|host|version|source|model$|data$)")


def run(code: Path, script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(code / "src"), "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, script, *args], cwd=code, env=env, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def weights_file(out: Path) -> Path:
    """A 124M-shaped random GPT-2 in the Hub's layout (tests/helpers/local_internet.py writes it)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.local_internet import write_gpt2_safetensors

    path = out / "gpt2-random.safetensors"
    if not path.exists():
        write_gpt2_safetensors(path, "gpt2", seed=0)
    return path


def three_classes(out: Path) -> Path:
    path = out / "three.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for line in TSV.read_text(encoding="utf-8").splitlines():
            label, _, text = line.partition("\t")
            if label == "spam":
                label = "spam_digits" if any(c.isdigit() for c in text) else "spam_words"
            writer.writerow([text, label])
    return path


def record_export(folder: Path) -> dict[str, Any]:
    """The export's record and the sha256 of each file (the model card and ONNX graph bytes left out: they name
    paths or embed exporter versions; the weights' and tokenizer files' bytes are compared)."""
    record_file = folder / "spam_lightning.json"
    record = (
        json.loads(record_file.read_text())
        if record_file.exists()
        else json.loads((folder / "config.json").read_text())
    )
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
    return {"record": record, "files": {k: v for k, v in files.items() if not k.endswith((".onnx", ".data", ".md"))}}


def collect(code: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.tokenizer_file={TIKTOKEN}", "trainer.enable_progress_bar=false", "trainer.deterministic=true"]
    sms = [f"data.source={ZIP}", f"data.data_dir={out / 'data'}"]
    runs = {
        "smoke": ["experiment=smoke", *sms, "trainer.max_epochs=1", "trainer.limit_train_batches=20"],
        "book": [
            "experiment=book",
            *sms,
            f"model.pretrained={weights_file(out)}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=30",
        ],
        "csv3": [
            "experiment=smoke",
            "data=csv",
            f"data.path={three_classes(out)}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=20",
        ],
    }
    results: dict[str, Any] = {}
    for name, overrides in runs.items():
        run_dir = out / name
        run(code, "train.py", *overrides, *common, f"run_dir={run_dir}", "report=false")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        ckpt = metrics["best_checkpoint"]
        texts = out / "texts.txt"
        if not texts.exists():
            lines = TSV.read_text(encoding="utf-8").splitlines()[:200]
            texts.write_text("".join(line.partition("\t")[2] + "\n" for line in lines), encoding="utf-8")
        if name == "book":  # 124M on the CPU: fewer texts
            texts = out / "texts40.txt"
            texts.write_text("".join((out / "texts.txt").read_text(encoding="utf-8").splitlines(True)[:40]))
        predictions = run(code, "predict.py", f"ckpt_path={ckpt}", f"input_file={texts}", "format=jsonl")
        result: dict[str, Any] = {"metrics": metrics, "predictions": [json.loads(x) for x in predictions.splitlines()]}
        if name != "book":
            run(code, "evaluate.py", f"ckpt_path={ckpt}", "split=test", f"out_dir={out / name / 'eval'}")
            result["evaluation"] = json.loads((out / name / "eval" / "evaluation.json").read_text())
        formats = ("hf", "onnx") if name == "smoke" else ("auto",)
        for fmt in formats:
            folder = out / name / f"export-{fmt}"
            run(code, "export.py", f"ckpt_path={ckpt}", f"format={fmt}", f"out_dir={folder}")
            result[f"export_{fmt}"] = record_export(folder)
            if fmt == "onnx":  # the graph run by onnxruntime
                onnx = run(code, "predict.py", f"model_dir={folder}", "backend=onnxruntime", f"input_file={texts}",
                           "format=jsonl")  # fmt: skip
                result["predictions_onnxruntime"] = [json.loads(x) for x in onnx.splitlines()]
        results[name] = result
        print(f"{name}: test accuracy {metrics.get('test', {}).get('accuracy')}", flush=True)
    (out / "numbers.json").write_text(json.dumps(results, indent=1, sort_keys=True))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def compare(a: Path, b: Path) -> int:
    left = flatten(json.loads((a / "numbers.json").read_text()))
    right = flatten(json.loads((b / "numbers.json").read_text()))
    differing = []
    for key in sorted(left.keys() | right.keys()):
        leaf = key.rsplit(".", 1)[-1]
        if ".time_seconds." in key or (VOLATILE.search(leaf) and not leaf.endswith("sha256") and "files" not in key):
            continue
        if left.get(key, "<absent>") != right.get(key, "<absent>"):
            differing.append(f"{key}: {left.get(key, '<absent>')!r} -> {right.get(key, '<absent>')!r}")
    compared = len(left.keys() | right.keys())
    print(f"{compared} values compared; {len(differing)} differ")
    for line in differing:
        print("  " + line)
    return 1 if differing else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--out", type=Path, help="where the runs and numbers.json go")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two --out folders to compare")
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(compare(*args.compare))
    if args.out is None:
        parser.error("--out is required unless --compare is given")
    collect(args.code.resolve(), args.out.resolve())


if __name__ == "__main__":
    main()
