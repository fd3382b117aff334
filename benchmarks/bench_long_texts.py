"""Long texts through data=csv: a synthetic IMDb-sized set (50k texts of ~230 words, some over 1,024 tokens).

    python benchmarks/bench_long_texts.py --tokenizer-file ../shared/assets/gpt2.tiktoken

1. the data module reads, splits and tokenizes it, and counts the texts truncated to the context length;
2. time per training epoch with padding=batch, with and without data.bucket_by_length (a small random GPT, its last
   block trained, no feature cache; measured on --batches batches, extrapolated to the epoch's);
3. the frozen-feature cache of the training split, in memory and on disk, memory-mapped (model.cache_dir): peak
   anonymous memory (RssAnon: what the process holds) and file-backed resident pages (RssFile: page cache of the
   mapped files, which the kernel writes back and drops under memory pressure).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch

from spam_lightning.data.modules import CsvDataModule
from spam_lightning.data.preprocess import pad
from spam_lightning.training.feature_cache import FrozenFeatureCache
from spam_lightning.training.module import SpamClassifier

ARCH = {"emb_dim": 64, "n_layers": 2, "n_heads": 2, "context_length": 1024, "dropout": 0.0, "qkv_bias": True}
# The timing model: wider, so that a step's time is mostly the padded tokens' compute (the embeddings stay frozen,
# no cache: the whole network runs every step)
TIMING_ARCH = {**ARCH, "emb_dim": 128, "n_heads": 4}


def synthetic_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """n texts of log-normally distributed length (median ~190 words, mean ~230, ~1% over 1,024 tokens), two
    classes told apart by a few words."""
    rng = random.Random(seed)
    common = [
        "the",
        "a",
        "and",
        "of",
        "to",
        "is",
        "in",
        "it",
        "this",
        "that",
        "was",
        "as",
        "with",
        "for",
        "but",
        "film",
        "movie",
        "one",
        "all",
        "at",
        "by",
        "an",
        "his",
        "her",
        "they",
        "be",
        "not",
        "are",
        "have",
        "like",
        "just",
        "from",
        "good",
        "story",
        "time",
        "very",
        "really",
        "see",
        "well",
        "even",
        "much",
        "would",
        "only",
        "plot",
        "more",
        "some",
        "could",
        "make",
        "people",
        "scene",
        "characters",
        "acting",
        "first",
        "also",
        "other",
        "most",
        "think",
        "end",
        "after",
        "watch",
        "two",
        "way",
        "little",
        "never",
        "director",
    ]
    cues = {"pos": ["great", "wonderful", "loved", "superb"], "neg": ["awful", "boring", "hated", "worst"]}
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = max(5, int(rng.lognormvariate(5.25, 0.6)))
        text = [rng.choice(cues[label]) if rng.random() < 0.03 else rng.choice(common) for _ in range(words)]
        rows.append((" ".join(text), label))
    return pd.DataFrame(rows, columns=["text", "label"])


class MemoryWatch:
    """Peak RssAnon and RssFile (kB, /proc/self/status) sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def epoch_seconds(dm: CsvDataModule, bucket: bool, batches: int) -> tuple[float, int]:
    dm.bucket_by_length = bucket
    torch.manual_seed(0)
    model = SpamClassifier.from_options(
        arch=TIMING_ARCH, pretrained=None, trainable_layers="last_block", pool="last_token", cache_frozen=False
    )
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    per_batch = (time.perf_counter() - start) / batches
    total = dm.train_batches_per_epoch()
    return per_batch * total, total


def cache_peak(dm: CsvDataModule, directory: str | None) -> tuple[dict[str, int], float, float]:
    torch.manual_seed(0)
    model = SpamClassifier.from_options(
        arch=ARCH, pretrained=None, trainable_layers="last_block", pool="last_token"
    ).eval()
    cache = FrozenFeatureCache(keep_padding=False, directory=directory)
    cache.check(model.frozen_parameters())  # as training does: with a directory, rows go to disk under the trunk's key
    cache.open_store(torch.device("cpu"))
    rows = sorted(dm.token_ids("train"), key=len)
    start = time.perf_counter()
    with MemoryWatch() as watch:
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and (j + 1 - i) * len(rows[j]) <= 16384:
                j += 1
            input_ids, lengths = pad(rows[i:j], None)
            cache.fill(input_ids, lengths, model.frozen_features, rows[i:j])
            i = j
    return watch.peak, cache.nbytes / 2**30, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=100, help="training batches timed per variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokenizer-file", default=None)
    parser.add_argument("--parts", default="bucket,cache", help="bucket, cache or both")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bench_long_texts_") as tmp:
        data = Path(tmp) / "reviews.csv"
        synthetic_reviews(args.texts).to_csv(data, index=False)
        dm = CsvDataModule(
            path=str(data), tokenizer_file=args.tokenizer_file, padding="batch", pool="last_token",
            batch_size=args.batch_size, context_length=ARCH["context_length"],
        )  # fmt: skip
        start = time.perf_counter()
        with MemoryWatch() as before:
            dm.prepare_data()
            dm.setup("fit")
        lengths = [len(ids) for ids in dm.datasets["train"].ids]
        print(
            f"{args.texts} texts read, split, tokenized in {time.perf_counter() - start:.1f} s; training texts: "
            f"mean {sum(lengths) / len(lengths):.0f} tokens, truncated to 1024: {dm.truncated}; peak RssAnon "
            f"{before.peak['RssAnon'] / 2**20:.2f} GiB"
        )
        if "bucket" in args.parts:
            for bucket in (False, True):
                seconds, total = epoch_seconds(dm, bucket, args.batches)
                print(f"bucket_by_length={str(bucket).lower():<5}: {seconds:7.0f} s per epoch of {total} batches")
        if "cache" in args.parts:
            # memory-mapped first: the in-memory run's freed heap may not go back to the OS before the next one
            for directory in (str(Path(tmp) / "cache"), None):
                peak, gib, seconds = cache_peak(dm, directory)
                where = "memory-mapped" if directory else "in memory    "
                print(
                    f"cache {where}: {gib:.2f} GiB of features in {seconds:.0f} s; peak RssAnon "
                    f"{peak['RssAnon'] / 2**20:.2f} GiB, RssFile {peak['RssFile'] / 2**20:.2f} GiB"
                )


if __name__ == "__main__":
    main()
