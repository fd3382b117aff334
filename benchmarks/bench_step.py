"""The host's work per training step: our Lightning training step against a bare PyTorch loop of the same
arithmetic, in one process.

Both train the top block (and final norm and head) on the frozen trunk's features, batch 8, AdamW, on the same
batches (each padded to its own longest text, the default recipe's):

  (bare)  a plain loop over the train split's batches: the features computed once beforehand, then per step the
          model's forward from them, the cross-entropy of the last token, backward, AdamW's step. Nothing else.
  (ours)  `spam_lightning.training.run.run` (what `python train.py` runs) with the frozen-feature cache: the
          Lightning loop, the metrics, the NaN check, logging, checkpoints, the progress bar off. Timed from the
          start of each training batch to the start of the next, from the second epoch on (the cache is full);
          the steps that run into validation are left out.

The difference is what the framework adds to a step. With `--model tiny` (a 64-wide GPT: the arithmetic takes
about a millisecond) it is most of the step, as on a GPU, where a top-block step of GPT-2 is microseconds of
arithmetic; with `--model gpt2` (124M shapes, random weights) the CPU's arithmetic dominates.

    python benchmarks/bench_step.py --model tiny --epochs 4
"""

from __future__ import annotations

import argparse
import itertools
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
        return [b - a for starts in self.epochs[1:] for a, b in itertools.pairwise(starts)]


def config(model: str, work: Path, epochs: int) -> Any:
    overrides = [
        *MODELS[model],
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


def bare_loop(cfg: Any, epochs: int) -> list[float]:
    """Seconds per step of the plain loop, epochs 2.. (the same count of epochs as ours)."""
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data, context_length=1024)
    datamodule.prepare_data()
    datamodule.setup("fit")
    cfg.model.num_classes = len(datamodule.labels)
    model = instantiate(module_config(cfg.model))
    model.train()
    batches = []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            frozen = model.frozen_features(batch["input_ids"])
            batches.append((batch["input_ids"], batch["lengths"], frozen, batch["labels"]))
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    seconds = []
    for epoch in range(epochs):
        for input_ids, lengths, frozen, labels in batches:
            start = time.perf_counter()
            loss = F.cross_entropy(model(input_ids, lengths, frozen), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if epoch > 0:
                seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each; the first is not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_step-") as tmp:
        work = Path(tmp)
        bare = bare_loop(config(args.model, work, args.epochs), args.epochs)
        cfg = config(args.model, work, args.epochs)
        cfg.callbacks = {**cfg.callbacks, "step_timer": {"_target_": f"{__name__}.StepTimer"}}
        run(cfg)
        ours = StepTimer.made[-1].step_seconds()
    b, o = 1000 * statistics.median(bare), 1000 * statistics.median(ours)
    print(f"--model {args.model}, {torch.get_num_threads()} torch threads, median ms per step, epochs 2-{args.epochs}:")
    print(f"  (bare) plain PyTorch loop   {b:7.2f} ms  ({len(bare)} steps)")
    print(f"  (ours) Lightning, run()     {o:7.2f} ms  ({len(ours)} steps)")
    print(f"  ours / bare {o / b:.2f}x; the framework adds {o - b:.2f} ms per step")


if __name__ == "__main__":
    main()
