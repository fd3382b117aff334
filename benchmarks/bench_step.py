"""The host's work per training step: our Lightning training step against a bare PyTorch loop of the same
arithmetic, in one process.

Both train the top block (and final norm and head) on the frozen trunk's features, batch 8, AdamW, on the same
batches (each padded to its own longest text, the default recipe's):

  (bare)  a plain loop over the train split's batches, already on the device: the features computed once
          beforehand, then per step the model's forward from them, the cross-entropy of the last token, backward,
          AdamW's step. Nothing else.
  (ours)  `spam_lightning.training.run.run` (what `python train.py` runs) with the frozen-feature cache: the
          DataLoader, the Lightning loop, the metrics, the NaN check, logging, checkpoints, the progress bar off.
          Timed from the start of an epoch's first training batch to the start of its last (the last step runs
          into validation).

Both: the mean time per step over epochs 2 and later (the first fills the cache), on the CPU or a GPU (`--device
cuda`: the bare loop waits for the GPU at the ends of each epoch; ours waits in each step, for its NaN check).

The difference is what the framework adds to a step. With `--model tiny` (a 64-wide GPT: the arithmetic takes
about a millisecond) it is most of the step, as on a GPU, where a top-block step of GPT-2 is microseconds of
arithmetic; with `--model gpt2` (124M shapes, random weights) the CPU's arithmetic dominates.

    python benchmarks/bench_step.py --model tiny --epochs 4
    python benchmarks/bench_step.py --model gpt2 --epochs 3 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from spam_lightning.paths import config_dir
from spam_lightning.training.run import module_config, run

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
MODELS = {
    "tiny": ["experiment=smoke", "model.trainable_layers=last_block"],
    "gpt2": ["model.pretrained=null"],
}


class StepTimer(L.Callback):
    """Seconds between the starts of consecutive training batches, per epoch; the last window of an epoch (it runs
    into validation) is dropped."""

    made: ClassVar[list[StepTimer]] = []  # the one Hydra makes from the callbacks config

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []
        StepTimer.made.append(self)

    def on_train_epoch_start(self, *args: Any) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, *args: Any) -> None:
        self.epochs[-1].append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        """The mean seconds per step of each epoch after the first."""
        return [(starts[-1] - starts[0]) / (len(starts) - 1) for starts in self.epochs[1:] if len(starts) > 1]


def config(model: str, work: Path, epochs: int, device: str) -> Any:
    overrides = [
        *MODELS[model],
        *(["trainer=gpu"] if device == "cuda" else []),
        "data.batch_size=8",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test_after_fit=false",
        "report=false",
        f"run_dir={work / 'run'}",
        f"data.source={SHARED / 'data/sms_spam_collection/sms+spam+collection.zip'}",
        f"data.tokenizer_file={SHARED / 'assets/gpt2.tiktoken'}",
        f"data.data_dir={work / 'data'}",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def bare_loop(cfg: Any, epochs: int, device: str) -> list[float]:
    """The mean seconds per step of the plain loop in each epoch after the first."""
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data, context_length=1024)
    datamodule.prepare_data()
    datamodule.setup("fit")
    cfg.model.num_classes = len(datamodule.labels)
    model = instantiate(module_config(cfg.model)).to(device)
    model.train()
    batches = []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            input_ids, lengths = batch["input_ids"].to(device), batch["lengths"].to(device)
            batches.append((input_ids, lengths, model.frozen_features(input_ids), batch["labels"].to(device)))
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    seconds = []
    for epoch in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        for input_ids, lengths, frozen, labels in batches:
            loss = F.cross_entropy(model(input_ids, lengths, frozen), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        synchronize(device)
        if epoch > 0:
            seconds.append((time.perf_counter() - start) / len(batches))
    return seconds


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each; the first is not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_step-") as tmp:
        work = Path(tmp)
        bare = bare_loop(config(args.model, work, args.epochs, args.device), args.epochs, args.device)
        cfg = config(args.model, work, args.epochs, args.device)
        cfg.callbacks = {**cfg.callbacks, "step_timer": {"_target_": f"{__name__}.StepTimer"}}
        run(cfg)
        ours = StepTimer.made[-1].step_seconds()
    b, o = 1000 * statistics.mean(bare), 1000 * statistics.mean(ours)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"--model {args.model}, {where}, mean ms per step of epochs 2-{args.epochs}:")
    print(f"  (bare) plain PyTorch loop   {b:7.2f} ms")
    print(f"  (ours) Lightning, run()     {o:7.2f} ms")
    print(f"  ours / bare {o / b:.2f}x; the framework adds {o - b:.2f} ms per step")


if __name__ == "__main__":
    main()
