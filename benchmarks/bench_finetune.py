"""Fine-tuning speed: the book's plain PyTorch loop against this project's training, same recipe.

In one process, on the same machine, data split, initial weights, optimizer (AdamW, lr 5e-5, weight
decay 0.1), batch size (8) and number of epochs:

(a) book   a plain PyTorch loop written as in chapter 6: every text padded to the longest training
           text (120 tokens), logits at the last position, the full forward pass every step; no
           Lightning. Validation accuracy after every epoch, test accuracy at the end.
(b) ours   train.py's defaults (conf/): last_token pooling, each batch padded to its own longest,
           the frozen-feature cache and the one-position top block; Lightning with the default
           callbacks (checkpoints) and logger; validation every epoch, test at the end.
(c) ours, book semantics   experiment=book (padding to 120, pool=last) without the cache and with the
           full top block: the same arithmetic as (a), so the difference is the framework's overhead.

The model is random-initialised (model.pretrained=null): timings do not depend on the weights.
`--variant NAME=OVERRIDES` also times (b) with extra Hydra overrides (the GPU fast paths), e.g.
`--variant "bf16=trainer.precision=bf16-mixed" --variant "compile=model.compile=true model.tf32=true"`, or LoRA
against (b)'s last-block fine-tuning: `--variant "lora=model.finetune=lora model.lr=8e-4"` (no feature cache:
every block has adapters).
`--scaling` also times one epoch of (b) at 1x, 2x and 4x the training data (repeated; each copy's
first token is changed so the cache cannot share copies).

    python benchmarks/bench_finetune.py --model gpt2 --epochs 5 --threads 1 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader

from spam_lightning.data.modules import SmsSpamDataModule, TokenizedSplit, pad_collate
from spam_lightning.model.gpt import PRESETS, GPTModel, make_config
from spam_lightning.model.weights import build_gpt
from spam_lightning.training.module import SpamClassifier
from spam_lightning.training.run import module_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
MODELS: dict[str, str | dict[str, int]] = {  # --model: GPT-2's four sizes and smaller stand-ins
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "gpt2-6l": {"emb_dim": 768, "n_layers": 6, "n_heads": 12},
    "mini": {"emb_dim": 256, "n_layers": 4, "n_heads": 4},
    "tiny": {"emb_dim": 64, "n_layers": 2, "n_heads": 2},
}
RUNS = {
    "a": "(a) book loop, plain PyTorch",
    "b": "(b) ours, defaults",
    "c": "(c) ours, book semantics",
    "e": "(e) ours, python train.py",
}


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak resident memory (CPU, sampled every 5 ms) or peak allocated CUDA memory during a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/statm").is_file():
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Seconds per epoch (training + validation + checkpointing) and of each epoch's validation."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.epochs_cpu: list[float] = []
        self.validation: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validation.append(time.perf_counter() - self._val_start)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self._start)
        self.epochs_cpu.append(time.process_time() - self._cpu_start)


# --------------------------------------------------------------------------------------------------
# (a) the book's loop
# --------------------------------------------------------------------------------------------------


def book_model(arch: str | dict[str, int], seed: int, weights: str | None = None) -> nn.Module:
    """Chapter 6's classifier: GPT-2, a new 2-class head, only the last block + final norm + head train."""
    torch.manual_seed(seed)
    model = build_gpt(make_config(arch), weights, init_seed=None if weights else seed)  # as conf/model: ${seed}
    model.out_head = nn.Linear(model.cfg.emb_dim, 2)  # same RNG draws, so the same weights as SpamClassifier
    for p in model.parameters():
        p.requires_grad = False
    for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
        for p in module.parameters():
            p.requires_grad = True
    return model


@torch.no_grad()
def book_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(batch["input_ids"].to(device))[:, -1, :]
        correct += int((logits.argmax(dim=-1) == batch["labels"].to(device)).sum())
        total += len(batch["labels"])
    return correct / total


def book_setup(
    dm: SmsSpamDataModule, arch: str | dict[str, int], seed: int, device: torch.device, weights: str | None
) -> tuple[tuple[DataLoader, DataLoader, DataLoader], nn.Module, torch.optim.Optimizer]:
    """The book's train/validation/test loaders (every text padded to the longest training text: 120 tokens),
    model and AdamW."""
    collate = pad_collate(dm.pad_length)
    torch.manual_seed(seed)
    train_loader = DataLoader(dm.datasets["train"], batch_size=8, shuffle=True, drop_last=True, collate_fn=collate)
    val_loader = DataLoader(dm.datasets["validation"], batch_size=8, collate_fn=collate)
    test_loader = DataLoader(dm.datasets["test"], batch_size=8, collate_fn=collate)
    model = book_model(arch, seed, weights).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.1)
    return (train_loader, val_loader, test_loader), model, optimizer


def run_book(
    dm: SmsSpamDataModule,
    arch: str | dict[str, int],
    epochs: int,
    seed: int,
    device: torch.device,
    weights: str | None,
    steps: int | None = None,
) -> dict:
    if steps is not None:
        return estimate_book(dm, arch, epochs, seed, device, weights, steps)
    (train_loader, val_loader, test_loader), model, optimizer = book_setup(dm, arch, seed, device, weights)
    epoch_seconds, epoch_cpu, val_seconds, seen = [], [], [], 0
    with PeakMemory(device) as memory:
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            epoch_start, epoch_cpu_start = time.perf_counter(), time.process_time()
            model.train()
            for batch in train_loader:
                optimizer.zero_grad()
                logits = model(batch["input_ids"].to(device))[:, -1, :]  # the last output token
                loss = F.cross_entropy(logits, batch["labels"].to(device))
                loss.backward()
                optimizer.step()
                seen += len(batch["labels"])
            val_start = time.perf_counter()
            val_accuracy = book_accuracy(model, val_loader, device)
            sync(device)
            val_seconds.append(time.perf_counter() - val_start)
            epoch_seconds.append(time.perf_counter() - epoch_start)
            epoch_cpu.append(time.process_time() - epoch_cpu_start)
        fit_seconds = time.perf_counter() - start
        test_accuracy = book_accuracy(model, test_loader, device)
        sync(device)
        total_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    times = (fit_seconds, total_seconds, cpu_seconds)
    result = summary(seen, epoch_seconds, val_seconds, *times, memory, val_accuracy, test_accuracy)
    return {**result, "epoch_cpu_s": epoch_cpu}


def estimate_book(
    dm: SmsSpamDataModule,
    arch: str | dict[str, int],
    epochs: int,
    seed: int,
    device: torch.device,
    weights: str | None,
    steps: int,
) -> dict:
    """The book's loop timed for `steps` training steps and `steps` evaluation batches (after one of each as
    warm-up), extrapolated to its epochs: for models whose full run would take hours here."""
    (train_loader, val_loader, test_loader), model, optimizer = book_setup(dm, arch, seed, device, weights)
    val_batches, test_batches = len(val_loader), len(test_loader)
    batches = iter(train_loader)
    train_times, eval_times = [], []
    with PeakMemory(device) as memory:
        for i in range(steps + 1):
            batch = next(batches)
            sync(device)
            start = time.perf_counter()
            model.train()
            optimizer.zero_grad()
            logits = model(batch["input_ids"].to(device))[:, -1, :]
            F.cross_entropy(logits, batch["labels"].to(device)).backward()
            optimizer.step()
            sync(device)
            middle = time.perf_counter()
            model.eval()
            with torch.no_grad():
                model(batch["input_ids"].to(device))[:, -1, :].argmax(dim=-1)
            sync(device)
            if i:  # the first of each is warm-up
                train_times.append(middle - start)
                eval_times.append(time.perf_counter() - middle)
            print(f"  book step {i}: train {middle - start:.1f} s, eval batch {time.perf_counter() - middle:.1f} s",
                  flush=True)  # fmt: skip
    step_s, eval_s = statistics.median(train_times), statistics.median(eval_times)
    epoch_s = len(train_loader) * step_s + val_batches * eval_s
    fit_s = epochs * epoch_s
    result = {
        "estimated_from_steps": steps,
        "train_step_s": step_s,
        "eval_batch_s": eval_s,
        "train_examples": epochs * len(train_loader) * 8,
        "examples_per_s": 8 / step_s,
        "epoch_s": [epoch_s] * epochs,
        "validation_s": [val_batches * eval_s] * epochs,
        "fit_s": fit_s,
        "total_s": fit_s + test_batches * eval_s,
        "cpu_s": float("nan"),
        "peak_memory_mib": memory.mib,
        "val_accuracy": float("nan"),
        "test_accuracy": float("nan"),
    }
    del model, optimizer
    gc.collect()
    return result


def run_train_py(overrides: list[str], run_dir: Path, threads: int | None) -> dict[str, Any]:
    """`python train.py` end to end, as users run it, in its own process: wall time, the process's peak RSS, its
    checkpoints' sizes and metrics.json. `threads`: torch's intra-op threads there (OMP_NUM_THREADS)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *overrides,
        f"runs_dir={run_dir.parent}",
        f"run_name={run_dir.name}",
    ]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    total_s = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {done.returncode}): {done.stderr[-3000:]}")
    saved = json.loads((run_dir / "metrics.json").read_text())
    sizes = {path.name: round(path.stat().st_size / 2**20, 1) for path in (run_dir / "checkpoints").glob("*.ckpt")}
    return {
        "train_examples": 0,
        "examples_per_s": float("nan"),
        "epoch_s": [],  # not measured from outside the process
        "validation_s": [],
        "fit_s": saved["time_seconds"]["fit"],
        "total_s": total_s,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime,
        "peak_memory_mib": usage.ru_maxrss / 1024,  # the largest child's peak RSS (KiB on Linux)
        "val_accuracy": saved["validation"]["accuracy"],
        "test_accuracy": saved["test"]["accuracy"],
        "checkpoint_MiB": sizes,
        "trainable_parameters": saved["parameters"]["trainable"],
        "time_seconds": saved["time_seconds"],
        "log_tail": done.stderr[-2000:],
    }


def summary(
    seen: int,
    epoch_seconds: list[float],
    val_seconds: list[float],
    fit_seconds: float,
    total_seconds: float,
    cpu_seconds: float,
    memory: PeakMemory,
    val_accuracy: float,
    test_accuracy: float,
) -> dict[str, Any]:
    return {
        "train_examples": seen,
        "examples_per_s": seen / fit_seconds,
        "epoch_s": epoch_seconds,
        "validation_s": val_seconds,
        "fit_s": fit_seconds,
        "total_s": total_seconds,
        "cpu_s": cpu_seconds,  # process CPU time: less sensitive than wall time to other load on the machine
        "peak_memory_mib": memory.mib,
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
    }


# --------------------------------------------------------------------------------------------------
# (b), (c): this project's training
# --------------------------------------------------------------------------------------------------


def project_config(overrides: list[str], arch: str | dict[str, int], run_dir: Path) -> DictConfig:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    with open_dict(cfg):
        cfg.model.arch = arch
    return cfg


class RepeatedData(SmsSpamDataModule):
    """The training split repeated `factor` times; copy k > 0 has its first token shifted by k."""

    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.repeated = False

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.factor > 1 and not self.repeated:
            train = self.datasets["train"]
            ids = [[(row[0] + k) % 50000, *row[1:]] if k else row for k in range(self.factor) for row in train.ids]
            self.datasets["train"] = TokenizedSplit(ids, train.labels * self.factor)
            self.repeated = True


def run_project(
    cfg: DictConfig, device: torch.device, full_top_block: bool = False, factor: int = 1, test: bool = True
) -> dict[str, Any]:
    arch = cfg.model.arch
    context_length = make_config(arch).context_length
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("_target_")
    dm = RepeatedData(factor, context_length=context_length, **data_cfg)
    timer = EpochTimer()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, timer], logger=loggers or False)
    L.seed_everything(cfg.seed, verbose=False)
    model: SpamClassifier = instantiate(module_config(cfg.model))
    model.pooled_top_block = not full_top_block
    with PeakMemory(device) as memory:
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(model, datamodule=dm)
        sync(device)
        fit_seconds = time.perf_counter() - start
        val_accuracy = float(trainer.callback_metrics["val/accuracy"])
        test_accuracy = float("nan")
        if test:
            (tested,) = trainer.test(model, datamodule=dm, verbose=False)
            test_accuracy = tested["test/accuracy"]
        sync(device)
        total_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    seen = trainer.global_step * dm.batch_size
    times = (fit_seconds, total_seconds, cpu_seconds)
    result = summary(seen, timer.epochs, timer.validation, *times, memory, val_accuracy, test_accuracy)
    checkpoints = sorted(Path(cfg.run_dir, "checkpoints").glob("*.ckpt"))
    sizes = {path.name: round(path.stat().st_size / 2**20, 1) for path in checkpoints}
    trainable = model.num_trainable_parameters
    return {**result, "epoch_cpu_s": timer.epochs_cpu, "checkpoint_MiB": sizes, "trainable_parameters": trainable}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def weights_fingerprint(arch: str | dict[str, int], seed: int, weights: str | None) -> tuple[float, float]:
    """(a) and (b) start from the same weights: compare both models' parameter sums."""
    book = book_model(arch, seed, weights)
    L.seed_everything(seed, verbose=False)
    ours = SpamClassifier.from_options(
        arch=arch, pretrained=weights, init_seed=None if weights else seed, cache_frozen=False
    )
    return (
        float(sum(p.double().sum() for p in book.parameters())),
        float(sum(p.double().sum() for p in ours.net.gpt.parameters())),
    )


def print_table(results: dict[str, dict[str, Any]], labels: dict[str, str], header: str) -> None:
    print(f"\n{header}")
    print(
        f"{'run':<36}{'examples/s':>11}{'s/epoch':>9}{'fit s':>9}{'total s':>9}{'CPU s':>9}{'peak MiB':>10}"
        f"{'trainable':>12}{'val acc':>9}{'test acc':>9}  epochs (s)"
    )
    for key, r in results.items():
        epochs = ", ".join(f"{s:.1f}" for s in r["epoch_s"])
        per_epoch = f"{sum(r['epoch_s']) / len(r['epoch_s']):.1f}" if r["epoch_s"] else "-"
        trainable = f"{r['trainable_parameters']:,}" if "trainable_parameters" in r else ""  # (a): not counted
        print(
            f"{labels[key]:<36}{r['examples_per_s']:>11.1f}{per_epoch:>9}"
            f"{r['fit_s']:>9.1f}{r['total_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_memory_mib']:>10.0f}"
            f"{trainable:>12}{r['val_accuracy']:>9.4f}{r['test_accuracy']:>9.4f}  {epochs}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="gpt2", help="architecture (random weights)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of (a) and (b) (the book: 5)")
    parser.add_argument("--overhead-epochs", type=int, default=None, help="epochs of (c) (default: --epochs)")
    parser.add_argument("--runs", default="abc", help="which of a, b, c, e to run (default: abc)")
    parser.add_argument(
        "--book-steps",
        type=int,
        default=None,
        help="(a): time this many training steps and evaluation batches and extrapolate (default: run in full)",
    )
    parser.add_argument("--scaling", action="store_true", help="also time one epoch of (b) at 1x, 2x, 4x the data")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--source", default=None, help="the UCI zip (default: ../shared copy, else download)")
    parser.add_argument("--tokenizer-file", default=None, help="gpt2.tiktoken (default: ../shared copy)")
    parser.add_argument("--work-dir", default="runs/bench_finetune", help="data splits, checkpoints, logs")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument(
        "--weights-file",
        default=None,
        help="start (a) and (b) from this Hub-layout model.safetensors, as a run with pretrained weights does (its "
        "checkpoints then hold only the trained tensors); 'random': write a random one of --model's shape into "
        "--work-dir. Default: random init (model.pretrained=null, full checkpoints)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for (b), e.g. trainer.precision=bf16-mixed")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="also time (b) with these space-separated Hydra overrides; repeatable",
    )
    parser.add_argument("--verbose", action="store_true", help="show Lightning's and the project's logs")
    args = parser.parse_args(argv)

    if not args.verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "spam_lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    arch = MODELS[args.model]
    work = Path(args.work_dir).resolve()
    shared_zip = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
    shared_tokenizer = SHARED / "assets" / "gpt2.tiktoken"
    source = args.source or (str(shared_zip) if shared_zip.is_file() else None)
    tokenizer = args.tokenizer_file or (str(shared_tokenizer) if shared_tokenizer.is_file() else None)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    weights = args.weights_file
    if weights == "random":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from helpers.local_internet import write_gpt2_safetensors

        weights = str(write_gpt2_safetensors(work / f"{args.model}-random.safetensors", make_config(arch)))
    common = [
        f"model.pretrained={weights}" if weights else "model.pretrained=null",
        f"seed={args.seed}",
        f"data.data_dir={work / 'data'}",
        f"data.source={source}" if source else "data.source=null",
        f"data.tokenizer_file={tokenizer}" if tokenizer else "data.tokenizer_file=null",
        f"trainer.accelerator={accelerator}",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    book_dm = SmsSpamDataModule(
        source=source, data_dir=str(work / "data"), tokenizer_file=tokenizer, padding="longest_train", seed=args.seed
    )
    book_dm.prepare_data()
    book_dm.setup()

    # Building both models costs minutes and twice the memory for the largest sizes: only when (b) runs in-process.
    same: bool | str = "not checked"
    if "b" in args.runs:
        book_sum, ours_sum = weights_fingerprint(arch, args.seed, weights)
        same = abs(book_sum - ours_sum) < 1e-6
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": L.__version__,
        "load_average_before": os.getloadavg(),
    }
    print(f"load average before: {machine['load_average_before']}", flush=True)
    with torch.device("meta"):  # shapes only
        gpt = GPTModel(make_config(arch))
        gpt.out_head = nn.Linear(gpt.cfg.emb_dim, 2)  # the classifier's head, as in book_model
        n_params = sum(p.numel() for p in gpt.parameters())
    header = (
        f"model {args.model} ({n_params:,} parameters, {Path(weights).name if weights else 'random init'}), "
        "batch 8, AdamW lr 5e-5 wd 0.1, "
        f"{args.epochs} epochs ((c): {args.overhead_epochs or args.epochs}), "
        f"{machine['device']} {machine['cpu_model']}, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, lightning {machine['lightning']}; "
        f"same initial weights in (a) and (b): {same}"
    )
    print(header, flush=True)

    results: dict[str, dict[str, Any]] = {}
    labels = dict(RUNS)  # and one per --variant
    for key in args.runs:
        print(f"running {labels[key]} ...", flush=True)
        if key == "a":
            results[key] = run_book(book_dm, arch, args.epochs, args.seed, device, weights, args.book_steps)
        elif key == "b":
            cfg = project_config([*common, f"trainer.max_epochs={args.epochs}", *args.overrides], arch, work / "b")
            results[key] = run_project(cfg, device)
        elif key == "c":
            epochs = args.overhead_epochs or args.epochs
            overrides = ["experiment=book", "model.cache_frozen=false", f"trainer.max_epochs={epochs}"]
            cfg = project_config([*common, *overrides], arch, work / "c")
            results[key] = run_project(cfg, device, full_top_block=True)
        elif key == "e":
            if args.model not in PRESETS:
                parser.error("--runs e takes a GPT-2 preset as --model (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
            overrides = [*common, f"model={args.model}", f"trainer.max_epochs={args.epochs}", *args.overrides]
            results[key] = run_train_py(overrides, work / "e", args.threads)
        print("  " + json.dumps(results[key]), flush=True)
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        if not extra:
            parser.error(f"--variant {variant!r}: expected NAME=OVERRIDES, e.g. bf16=trainer.precision=bf16-mixed")
        key = f"b+{name}"
        labels[key] = f"(b) ours + {name}"
        print(f"running {labels[key]} ({extra}) ...", flush=True)
        cfg = project_config([*common, f"trainer.max_epochs={args.epochs}", *extra.split()], arch, work / key)
        results[key] = run_project(cfg, device)
        print("  " + json.dumps(results[key]), flush=True)
    if results:
        print_table(results, labels, header)
    ratios = {}
    if "a" in results and "b" in results:
        ratios["b_vs_a_total"] = results["a"]["total_s"] / results["b"]["total_s"]
        ratios["b_vs_a_fit"] = results["a"]["fit_s"] / results["b"]["fit_s"]
        ratios["b_vs_a_cpu"] = results["a"]["cpu_s"] / results["b"]["cpu_s"]
        for key in results:
            if key.startswith("b+"):
                ratios[f"{key}_vs_a_total"] = results["a"]["total_s"] / results[key]["total_s"]
                print(
                    f"{labels[key]} vs (a): {ratios[f'{key}_vs_a_total']:.1f}x faster end to end; test accuracy "
                    f"{results[key]['test_accuracy']:.4f}"
                )
        print(
            f"(b) vs (a): {ratios['b_vs_a_total']:.1f}x faster end to end (fit + test), "
            f"{ratios['b_vs_a_fit']:.1f}x for the fit alone, {ratios['b_vs_a_cpu']:.1f}x in CPU time; test accuracy "
            f"{results['b']['test_accuracy']:.4f} vs {results['a']['test_accuracy']:.4f}"
        )
    if "a" in results and "e" in results:
        estimated = " (the book's estimated from timed steps)" if args.book_steps else ""
        ratios["e_vs_a_total"] = results["a"]["total_s"] / results["e"]["total_s"]
        e = results["e"]
        print(
            f"(e) python train.py vs (a): {ratios['e_vs_a_total']:.1f}x faster end to end{estimated}: "
            f"{e['total_s']:.0f} s against {results['a']['total_s']:.0f} s; peak RSS {e['peak_memory_mib'] / 1024:.1f} "
            f"GiB; checkpoints {e['checkpoint_MiB']} MiB; train.py's own times {e['time_seconds']}"
        )
    if "a" in results and "c" in results:
        per_epoch = {k: sum(results[k]["epoch_s"]) / len(results[k]["epoch_s"]) for k in "ac"}
        cpu_epoch = {k: sum(results[k]["epoch_cpu_s"]) / len(results[k]["epoch_cpu_s"]) for k in "ac"}
        ratios["c_vs_a_epoch_overhead"] = per_epoch["c"] / per_epoch["a"] - 1
        ratios["c_vs_a_epoch_cpu_overhead"] = cpu_epoch["c"] / cpu_epoch["a"] - 1
        print(
            f"(c) vs (a), the framework's overhead: {100 * ratios['c_vs_a_epoch_overhead']:+.1f}% seconds per epoch "
            f"({per_epoch['c']:.1f} s vs {per_epoch['a']:.1f} s), {100 * ratios['c_vs_a_epoch_cpu_overhead']:+.1f}% "
            f"CPU seconds per epoch ({cpu_epoch['c']:.1f} vs {cpu_epoch['a']:.1f})"
        )

    scaling = []
    if args.scaling:
        print("\none epoch of (b) at 1x, 2x, 4x the training data:", flush=True)
        for factor in (1, 2, 4):
            cfg = project_config([*common, "trainer.max_epochs=1"], arch, work / f"scaling{factor}")
            r = run_project(cfg, device, factor=factor, test=False)
            train_s = r["epoch_s"][0] - r["validation_s"][0]
            scaling.append(
                {"factor": factor, "examples": r["train_examples"], "epoch_s": r["epoch_s"][0], "train_s": train_s}
            )
            base = scaling[0]
            print(
                f"  {factor}x: {r['train_examples']:>5} examples, epoch {r['epoch_s'][0]:.1f} s "
                f"(training part {train_s:.1f} s, {train_s / base['train_s']:.2f}x the 1x; "
                f"{1000 * train_s / r['train_examples']:.1f} ms per example)",
                flush=True,
            )

    machine["load_average_after"] = os.getloadavg()
    print(f"load average after: {machine['load_average_after']} (other work on the machine slows wall times)")
    report = {"machine": machine, "args": vars(args), "results": results, "ratios": ratios, "scaling": scaling}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
