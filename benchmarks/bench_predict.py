"""Prediction speed: batched inference against classifying one text at a time (messages/s), and torch against
onnxruntime.

On the test split's messages (repeated to --messages), with a random-initialised model of --model:

  book, one at a time     the book's classify_review(): each text padded to 120 tokens, logits at the
                          last position (pool=last), one forward pass per text
  ours, one at a time     Predictor.predict([text]) per text (pool=last_token, no padding)
  ours, batched           Predictor.predict(texts, batch_size): texts grouped by length, each batch padded
                          to its own longest; with --precisions 32,bf16 also in bfloat16 autocast (GPUs)

Each mode runs --repeats times, the modes alternating (so that all see the same load), and its median is printed.
The batched and one-at-a-time P(spam) must agree (printed as the largest difference, per precision).
"positions/msg" is how many token positions each mode pushes through the transformer per message. Where the
forward pass is compute-bound (a CPU) batching can only remove padding, so the speed it can reach is the
token-position bound: the book's messages/s x book positions/msg / ours positions/msg. "/ bound" is a batched
mode's messages/s over that bound; the goal (issue 19) is at least 0.9 (BOUND_GOAL).

With --onnxruntime, also (after that table; --no-batching: only this): the model (--model with random weights, or
a trained --ckpt) is exported with export.py's format=onnx, and predict.py's two backends on that folder are timed
against each other in one process on the CPU, at each of --batch-sizes, alternating torch and onnxruntime;
onnxruntime's intra-op threads are torch's (--threads). The goal is onnxruntime at least 1.3x torch (ONNX_GOAL).

    python benchmarks/bench_predict.py --model gpt2 --threads 1 --json predict.json
    python benchmarks/bench_predict.py --model gpt2 --threads 1 --messages 64 --repeats 2 --onnxruntime
    python benchmarks/bench_predict.py --device cuda --batch-sizes 8,64,256 --precisions 32,bf16
    python benchmarks/bench_predict.py --no-batching --onnxruntime --ckpt runs/smoke/checkpoints/BEST.ckpt --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.preprocess import PAD_TOKEN_ID, Preprocessing, get_tokenizer
from spam_lightning.data.sms_spam import LABELS
from spam_lightning.inference.checkpoint import TrainedModel, load_trained
from spam_lightning.inference.export import write_export
from spam_lightning.inference.predictor import Predictor
from spam_lightning.training.module import SpamClassifier

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
MODELS: dict[str, str | dict[str, int]] = {
    "gpt2": "gpt2",
    "gpt2-6l": {"emb_dim": 768, "n_layers": 6, "n_heads": 12},
    "mini": {"emb_dim": 256, "n_layers": 4, "n_heads": 4},
    "tiny": {"emb_dim": 64, "n_layers": 2, "n_heads": 2},
}
Scorer = Callable[[Sequence[str]], list[float]]
BOUND_GOAL = 0.9  # batched messages/s over the token-position bound (issue 19)
ONNX_GOAL = 1.3  # onnxruntime messages/s over torch's (issue 19)


def classifier(arch: str | dict[str, int], pool: str, device: torch.device) -> SpamClassifier:
    L.seed_everything(123, verbose=False)
    return SpamClassifier.from_options(arch=arch, pretrained=None, pool=pool, cache_frozen=False).to(device).eval()


def book_scorer(model: SpamClassifier, tokenizer_file: str | None, max_length: int) -> Scorer:
    """The book's classify_review, returning P(spam) instead of the label."""
    tokenizer = get_tokenizer(tokenizer_file)
    model.pooled_top_block = False  # the book's full forward pass

    @torch.no_grad()
    def score(texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            ids = tokenizer.encode_ordinary(text)[:max_length]
            ids += [PAD_TOKEN_ID] * (max_length - len(ids))
            logits = model(torch.tensor(ids, device=model.device).unsqueeze(0))  # pool=last: the last position
            out.append(float(logits.softmax(dim=-1)[0, 1]))
        return out

    return score


def project_scorer(model: SpamClassifier, tokenizer_file: str | None, batch_size: int, precision: str) -> Scorer:
    """spam_lightning.inference.predictor.Predictor around a copy of the model's network."""
    net = copy.deepcopy(model.net)
    context = net.gpt.cfg.context_length
    preprocessing = Preprocessing(LABELS, max_length=context, pad_length=None, padding="batch", pool=net.pool)
    predictor = Predictor(TrainedModel(net, preprocessing, {}), get_tokenizer(tokenizer_file), model.device, precision)

    def score(texts: Sequence[str]) -> list[float]:
        return [p for p in predictor.positive_probabilities(texts, batch_size)[0] if p is not None]

    return score


def positions_computed(lengths: Sequence[int], batch_size: int) -> int:
    """Token positions Predictor runs: texts sorted by length, each batch padded to its longest."""
    ordered = sorted(lengths)
    chunks = (ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size))
    return sum(max(chunk) * len(chunk) for chunk in chunks)


def timed(score: Scorer, texts: Sequence[str], one_at_a_time: bool, device: torch.device) -> tuple[float, list[float]]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    probs = [p for text in texts for p in score([text])] if one_at_a_time else score(texts)
    return time.perf_counter() - start, probs  # the probabilities are on the CPU: the work is done


def alternating(runs: dict[str, Callable[[], list[float]]], repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds of each run over `repeats` rounds, the runs alternating within each round; last P(spam)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    probs = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            probs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, probs


def verdict(ratio: float, goal: float) -> str:
    return "pass" if ratio >= goal else "FAIL"


def compare_backends(args: argparse.Namespace, texts: list[str], tokenizer_file: str | None) -> dict:
    """torch against onnxruntime on one export.py format=onnx folder: messages/s per batch size, and the ratio."""
    if args.ckpt:
        model, name = load_trained(args.ckpt), Path(args.ckpt).name
    else:
        net = classifier(MODELS[args.model], "last_token", torch.device("cpu")).net
        pre = Preprocessing(LABELS, net.gpt.cfg.context_length, pad_length=None, padding="batch", pool="last_token")
        model, name = TrainedModel(net, pre, {}), f"{args.model} (random init)"
    folder = Path(args.work_dir) / "onnx"
    start = time.perf_counter()
    write_export(model, folder, get_tokenizer(tokenizer_file), overwrite=True, format="onnx")
    export_s = time.perf_counter() - start
    predictors = {
        "torch": Predictor.from_dir(folder, device="cpu"),
        "onnxruntime": Predictor.from_dir(folder, backend="onnxruntime"),
    }
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    results: dict[str, dict] = {}
    for size in sizes:
        runs = {}
        for backend, predictor in predictors.items():
            predictor.positive_probabilities(texts[:8], size)  # warm-up
            runs[backend] = lambda p=predictor, size=size: p.positive_probabilities(texts, size)[0]
        seconds, probs = alternating(runs, args.repeats)
        for backend in predictors:
            results[f"{backend}, batch {size}"] = {
                "seconds": seconds[backend],
                "messages_per_s": len(texts) / seconds[backend],
            }
        ort = results[f"onnxruntime, batch {size}"]
        ort["max_abs_dP_vs_torch"] = max(abs(a - b) for a, b in zip(probs["torch"], probs["onnxruntime"], strict=True))
        ort["vs_torch"] = ort["messages_per_s"] / results[f"torch, batch {size}"]["messages_per_s"]
    print(
        f"\nmodel {name}, {len(texts)} test messages, cpu, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__} "
        f"({predictors['onnxruntime'].net.session.get_providers()[0]}); export (format=onnx) {export_s:.1f} s"
    )
    header = f"backend (median of {args.repeats})"
    print(f"{header:<26}{'messages/s':>12}{'seconds':>10}{'onnxruntime/torch':>19}{'max |dP|':>11}")
    for size in sizes:
        for backend in predictors:
            r = results[f"{backend}, batch {size}"]
            ratio = f"{r['vs_torch']:.2f}x" if backend == "onnxruntime" else "-"
            diff = f"{r['max_abs_dP_vs_torch']:.1e}" if backend == "onnxruntime" else "-"
            label = f"{backend}, batch {size}"
            print(f"{label:<26}{r['messages_per_s']:>12.1f}{r['seconds']:>10.2f}{ratio:>19}{diff:>11}")
    print("max |dP|: largest difference of P(spam) from torch at the same batch size")
    goals = ", ".join(
        f"batch {size} {results[f'onnxruntime, batch {size}']['vs_torch']:.2f}x "
        f"{verdict(results[f'onnxruntime, batch {size}']['vs_torch'], ONNX_GOAL)}"
        for size in sizes
    )
    print(f"goal onnxruntime/torch >= {ONNX_GOAL}x: {goals}")
    return {"results": results, "export_s": export_s}


def compare_batching(args: argparse.Namespace, texts: list[str], tokenizer_file: str | None, book_length: int) -> dict:
    """The book's one-at-a-time classify_review against ours, one at a time and batched: messages/s, positions per
    message, and each batched mode's messages/s over the token-position bound."""
    device = torch.device(args.device)
    lengths = [min(len(ids), book_length) for ids in get_tokenizer(tokenizer_file).encode_ordinary_batch(texts)]
    arch = MODELS[args.model]
    ours = classifier(arch, "last_token", device)  # each Predictor gets its own copy of these weights
    scorers = {
        "book, one at a time": (book_scorer(classifier(arch, "last", device), tokenizer_file, book_length), True),
        "ours, one at a time": (project_scorer(ours, tokenizer_file, 1, "32"), True),
    }
    positions = {"book, one at a time": book_length * len(texts), "ours, one at a time": sum(lengths)}
    for precision in args.precisions.split(","):
        for size in map(int, args.batch_sizes.split(",")):
            name = f"ours, batched ({size})" + (f" {precision}" if precision != "32" else "")
            scorers[name] = (project_scorer(ours, tokenizer_file, size, precision), False)
            positions[name] = positions_computed(lengths, size)
    runs = {}
    for name, (score, single) in scorers.items():
        score(texts[:8])  # warm-up (CUDA kernels, allocator)
        runs[name] = lambda score=score, single=single: timed(score, texts, single, device)[1]
    seconds, probs = alternating(runs, args.repeats)
    book = len(texts) / seconds["book, one at a time"]
    results = {}
    for name in scorers:
        results[name] = {
            "seconds": seconds[name],
            "messages_per_s": len(texts) / seconds[name],
            "positions_per_message": positions[name] / len(texts),
        }
        if name.startswith("ours, batched"):
            bound = book * book_length / results[name]["positions_per_message"]
            results[name] |= {"bound_messages_per_s": bound, "vs_bound": results[name]["messages_per_s"] / bound}
            reference = probs["ours, one at a time"]
            results[name]["max_abs_dP"] = max(abs(a - b) for a, b in zip(reference, probs[name], strict=True))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\nmodel {args.model} (random init), {len(texts)} test messages, {device_name}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    header = f"mode (median of {args.repeats})"
    print(f"{header:<30}{'messages/s':>12}{'seconds':>10}{'vs book':>9}{'positions/msg':>15}{'/ bound':>9}"
          f"{'max |dP|':>11}")  # fmt: skip
    for name, r in results.items():
        bound = f"{r['vs_bound']:.2f}" if "vs_bound" in r else "-"
        diff = f"{r['max_abs_dP']:.1e}" if "max_abs_dP" in r else "-"
        print(
            f"{name:<30}{r['messages_per_s']:>12.1f}{r['seconds']:>10.2f}{r['messages_per_s'] / book:>8.1f}x"
            f"{r['positions_per_message']:>15.1f}{bound:>9}{diff:>11}"
        )
    print("max |dP|: largest difference of P(spam) from ours one at a time (float32)")
    print(f"/ bound: messages/s over book messages/s x {book_length} / positions/msg (book positions over ours)")
    goals = ", ".join(f"{n[6:]} {r['vs_bound']:.2f} {verdict(r['vs_bound'], BOUND_GOAL)}"
                      for n, r in results.items() if "vs_bound" in r)  # fmt: skip
    print(f"goal batched >= {BOUND_GOAL} x the token-position bound: {goals}")
    return {"results": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="gpt2")
    parser.add_argument("--messages", type=int, default=300, help="how many test messages (repeated if needed)")
    parser.add_argument("--batch-sizes", default="8,64", help="batch sizes of the batched runs, comma-separated")
    parser.add_argument("--precisions", default="32", help="precisions of the batched runs: 32 and/or bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--source", default=None, help="the UCI zip (default: ../shared copy, else download)")
    parser.add_argument("--tokenizer-file", default=None, help="gpt2.tiktoken (default: ../shared copy)")
    parser.add_argument("--work-dir", default="runs/bench_predict")
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timings per mode, alternating (the median)")
    parser.add_argument("--onnxruntime", action="store_true", help="also torch against onnxruntime (see above)")
    parser.add_argument("--no-batching", action="store_true", help="skip the batching table (with --onnxruntime)")
    parser.add_argument("--ckpt", default=None, help="with --onnxruntime: a trained checkpoint instead of --model")
    args = parser.parse_args(argv)
    if args.no_batching and not args.onnxruntime:
        parser.error("--no-batching leaves nothing to run without --onnxruntime")
    logging.getLogger("spam_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    shared_zip = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
    shared_tokenizer = SHARED / "assets" / "gpt2.tiktoken"
    source = args.source or (str(shared_zip) if shared_zip.is_file() else None)
    tokenizer_file = args.tokenizer_file or (str(shared_tokenizer) if shared_tokenizer.is_file() else None)
    dm = SmsSpamDataModule(source=source, data_dir=args.work_dir, tokenizer_file=tokenizer_file)
    dm.prepare_data()
    dm.setup("fit")
    test = dm.read_split("test")["text"].tolist()
    texts = (test * (args.messages // len(test) + 1))[: args.messages]
    report: dict = {"args": vars(args), "threads": torch.get_num_threads()}
    if not args.no_batching:
        report["batching"] = compare_batching(args, texts, tokenizer_file, dm.pad_length or 120)  # the book's 120
    if args.onnxruntime:
        report["onnxruntime"] = compare_backends(args, texts, tokenizer_file)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
