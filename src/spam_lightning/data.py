"""The UCI SMS Spam Collection as a LightningDataModule: download, parse, balance, split, pad.

Follows chapter 6 of *Build a Large Language Model (From Scratch)*: undersample ham to the 747 spam
messages, shuffle with a seed, split 70/10/20 (1045/149/300), encode with GPT-2's BPE and right-pad
with <|endoftext|> (50256) to the longest training text.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import tiktoken
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from spam_lightning.downloads import fetch
from spam_lightning.errors import ConfigError, DownloadError, UserError
from spam_lightning.files import atomic_write_bytes
from spam_lightning.tokenizer import PAD_TOKEN_ID, TIKTOKEN_URL, file_sha256, get_tokenizer

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)  # one summary, not one per DDP rank

UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"  # the book's
ZIP_NAME = "sms+spam+collection.zip"
ZIP_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
TSV_NAME = "SMSSpamCollection"  # the one zip member we extract
TSV_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
LABELS = {"ham": 0, "spam": 1}
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.7, 0.1)  # train, validation; test gets the rest
MANIFEST_NAME = "splits.json"


class DataError(UserError, ValueError):
    """Bad input data: the message names the file (and line) and what was expected."""


# --------------------------------------------------------------------------------------------------
# Files: checked downloads, safe extraction
# --------------------------------------------------------------------------------------------------


def download_zip(urls: Sequence[str], data_dir: Path) -> Path:
    """The UCI zip in data_dir: a verified copy there, else downloaded from the first URL that works."""
    return fetch(
        urls,
        ZIP_SHA256,
        data_dir / ZIP_NAME,
        what="the SMS Spam Collection",
        offline_hint="pass a local copy: data.source=/path/to/sms+spam+collection.zip (or the extracted "
        "SMSSpamCollection file)",
    )


def check_sha256(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(f"{path}: sha256 is {actual}, expected {expected} (corrupt or different file)")


def extract_tsv(zip_path: Path, dest: Path, verify: bool = True) -> None:
    """Extract only the `SMSSpamCollection` member, to a path we choose (no path traversal)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            if TSV_NAME not in archive.namelist():
                raise DataError(f"{zip_path}: no member {TSV_NAME!r} (members: {archive.namelist()[:10]})")
            data = archive.read(TSV_NAME)  # also checks the member's CRC-32
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{zip_path}: not a valid zip archive ({err})") from err
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        if actual != TSV_SHA256:
            raise DataError(f"{zip_path}!{TSV_NAME}: sha256 is {actual}, expected {TSV_SHA256}")
    atomic_write_bytes(dest, data)


# --------------------------------------------------------------------------------------------------
# Parsing, balancing, splitting
# --------------------------------------------------------------------------------------------------


def parse_sms_collection(path: str | Path) -> pd.DataFrame:
    """Read `label<TAB>text` lines into a DataFrame with columns label (0 ham, 1 spam) and text.

    Each line is split at its first tab; quotes are ordinary characters (pandas' default quoting
    merges lines and loses two messages). A BOM and CRLF endings are accepted.
    """
    path = Path(path)
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the trailing newline
    labels, texts = [], []
    for number, line in enumerate(lines, start=1):
        try:
            decoded = line.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}, line {number}: invalid UTF-8 at byte {err.start}") from err
        label, tab, text = decoded.partition("\t")
        if not tab:
            raise DataError(f"{path}, line {number}: expected 'label<TAB>text', found no tab")
        if label not in LABELS:
            raise DataError(f"{path}, line {number}: unknown label {label!r}, expected 'ham' or 'spam'")
        if not text.strip():
            raise DataError(f"{path}, line {number}: empty text")
        labels.append(LABELS[label])
        texts.append(text)
    if not labels:
        raise DataError(f"{path}: no messages")
    return pd.DataFrame({"label": labels, "text": texts})


def balance_and_split(df: pd.DataFrame, seed: int, source: str = "data") -> dict[str, pd.DataFrame]:
    """Undersample the majority class to the minority count, shuffle, split 70/10/20 (the book's way)."""
    counts = df["label"].value_counts()
    if len(counts) < 2:
        raise DataError(f"{source}: only one class present ({dict(counts)}); need both ham and spam")
    minority = int(counts.min())
    n = 2 * minority
    if int(n * SPLIT_FRACTIONS[0]) < 1 or int(n * SPLIT_FRACTIONS[1]) < 1 or n - int(n * 0.7) - int(n * 0.1) < 1:
        raise DataError(f"{source}: {n} balanced rows are too few for a 70/10/20 split with no empty part")
    # Like the book: sample the majority class, then concatenate ham before spam, then shuffle.
    parts = [
        group.sample(minority, random_state=seed) if len(group) > minority else group
        for _, group in sorted(df.groupby("label"))
    ]
    balanced = pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(n * SPLIT_FRACTIONS[0])
    val_end = train_end + int(n * SPLIT_FRACTIONS[1])
    return {
        "train": balanced[:train_end].reset_index(drop=True),
        "validation": balanced[train_end:val_end].reset_index(drop=True),
        "test": balanced[val_end:].reset_index(drop=True),
    }


def _class_counts(df: pd.DataFrame) -> dict[str, int]:
    spam = int(df["label"].sum())
    return {"ham": len(df) - spam, "spam": spam}


# --------------------------------------------------------------------------------------------------
# Tokenised dataset, padding, sampling
# --------------------------------------------------------------------------------------------------


@dataclass
class TokenizedSplit(Dataset):
    """Token ids (already truncated) and labels of one split."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


def pad_collate(pad_to: int | None) -> Callable[[list[tuple[list[int], int]]], dict[str, torch.Tensor]]:
    """Right-pad with <|endoftext|> to `pad_to` tokens, or to the batch's longest when None."""

    def collate(batch: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids, _ in batch]
        width = pad_to if pad_to is not None else max(lengths)
        input_ids = torch.full((len(batch), width), PAD_TOKEN_ID, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "lengths": torch.tensor(lengths, dtype=torch.long),
            "labels": torch.tensor([label for _, label in batch], dtype=torch.long),
        }

    return collate


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Training batches of similar length (less padding with padding="batch").

    Takes the shuffled order of `sampler` (a DistributedSampler: this rank's share for the epoch), sorts
    each window of `window` batches by length, cuts it into batches and shuffles the batches. Like the
    sampler it depends only on (seed, epoch); Lightning sets the epoch on `self.sampler`.
    """

    def __init__(
        self, sampler: DistributedSampler, lengths: Sequence[int], batch_size: int, drop_last: bool, window: int = 50
    ) -> None:
        self.sampler = sampler
        self.lengths = lengths
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.window = window

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = [b for b in batches if len(b) == self.batch_size]
        generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
        # yield, not return iter(...): the order is drawn when iteration starts, after Lightning's set_epoch
        # (it creates the iterator first), so a run resumed in a later epoch gets that epoch's order.
        yield from [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class ResumableBatchSampler(Sampler[list[int]]):
    """The batches of `batch_sampler`, skipping the first `skip` of them once: a run resumed mid-epoch
    continues with the batch after the last one it trained, not from the epoch's start."""

    def __init__(self, batch_sampler: Sampler[list[int]], skip: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler.sampler  # Lightning calls sampler.set_epoch through this attribute
        self.skip = skip if 0 < skip < len(batch_sampler) else 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.batch_sampler), skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # Lightning counts the skipped batches as done already


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r of w takes items r, r+w, ...; every item is seen exactly once.

    (torch's DistributedSampler pads with repeated items to divide evenly, which would count
    duplicates in validation and test metrics.)
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------------
# The DataModule
# --------------------------------------------------------------------------------------------------


class SmsSpamDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str | None = None,
        data_dir: str = "data/sms_spam",
        tokenizer_file: str | None = None,
        tokenizer_url: str = TIKTOKEN_URL,
        padding: str | int = "auto",
        pool: str = "last",
        bucket_by_length: bool = False,
        max_length: int | None = None,
        context_length: int = 1024,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 123,
        drop_last: bool = True,
        verify_checksum: bool = True,
        urls: Sequence[str] = (UCI_URL, BACKUP_URL),
    ) -> None:
        """
        Args:
            source: a local zip, a local extracted `SMSSpamCollection` file, or a URL; None means a
                verified copy in `data_dir`, else a download from UCI (book's backup URL as fallback).
            data_dir: where the zip, the extracted file and train/validation/test.csv are kept.
            tokenizer_file: a local GPT-2 `.tiktoken` ranks file (sha256-checked, then kept in the cache);
                None: the cached copy, else a download from `tokenizer_url`.
            padding: "longest_train" (the book: every split padded/truncated to the longest training
                text), an int (that fixed length), "batch" (each batch to its own longest), or "auto":
                "batch" unless `pool` is "last", whose result depends on the padding ("longest_train").
            pool: the model's pooling (model.pool); only used to resolve padding="auto".
            bucket_by_length: group training texts of similar length into batches (less padding with
                padding="batch"; the batches are no longer uniformly random).
            max_length: truncate texts to this many tokens (None: only the context length limits).
            context_length: the model's context length; texts are never longer than this.
            batch_size: training batch size (the book: 8); eval_batch_size defaults to it.
            seed: seeds balancing, shuffling before the split, and the training order.
            drop_last: drop the last incomplete training batch (the book: True).
            verify_checksum: check the data against UCI's published sha256 (turn off only for your
                own variant of the file).
            urls: download URLs of the UCI zip, tried in order.
        """
        super().__init__()
        if padding == "auto":
            padding = "longest_train" if pool == "last" else "batch"
        if not (padding in ("longest_train", "batch") or (isinstance(padding, int) and padding > 0)):
            raise ConfigError(
                f"data.padding must be 'auto', 'longest_train', 'batch' or a positive int, got {padding!r}"
            )
        if max_length is not None and not 0 < max_length <= context_length:
            raise ConfigError(f"data.max_length must be in [1, context_length={context_length}], got {max_length}")
        if isinstance(padding, int) and padding > context_length:
            raise ConfigError(f"data.padding={padding} exceeds the model's context length {context_length}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size} (eval: {eval_batch_size})")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.source = source
        self.data_dir = Path(data_dir).expanduser()
        self.tokenizer_file = tokenizer_file
        self.tokenizer_url = tokenizer_url
        self.padding = padding
        self.bucket_by_length = bucket_by_length
        self.max_length = min(max_length or context_length, context_length)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.drop_last = drop_last
        self.verify_checksum = verify_checksum
        self.urls = list(urls)
        self.datasets: dict[str, TokenizedSplit] = {}
        self.pad_length: int | None = None  # fixed padded length, None for padding="batch"
        self._summarized = False  # the data summary was logged

    # -- prepare_data: runs once (rank 0), writes files ----------------------------------------

    def prepare_data(self) -> None:
        """Obtain the data and the vocabulary (download or verify), write the splits. Both downloads are tried
        before failing, so offline use fails once, naming everything missing."""
        failed = []
        try:
            tsv = self._obtain_tsv()
        except DownloadError as err:
            failed.append(err)
        try:
            self.tokenizer()  # once, before the DDP ranks need it
        except DownloadError as err:
            failed.append(err)
        if failed:
            raise DownloadError.combine(failed)
        self._write_splits(tsv)

    def tokenizer(self) -> tiktoken.Encoding:
        return get_tokenizer(self.tokenizer_file, self.tokenizer_url)

    def _obtain_tsv(self) -> Path:
        """Return a checked `SMSSpamCollection` file, from `source`, `data_dir` or a download."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tsv = self.data_dir / TSV_NAME
        source = self.source
        if source is not None and "://" in source:
            zip_path = download_zip([source], self.data_dir)
            extract_tsv(zip_path, tsv, self.verify_checksum)
            return tsv
        if source is not None:
            src = Path(source).expanduser()
            if not src.is_file():
                raise DataError(f"data.source {str(src)!r} does not exist")
            if zipfile.is_zipfile(src) or src.suffix == ".zip":
                if self.verify_checksum:
                    check_sha256(src, ZIP_SHA256)
                extract_tsv(src, tsv, self.verify_checksum)
                return tsv
            if self.verify_checksum:
                check_sha256(src, TSV_SHA256)
            if src.resolve() != tsv.resolve():
                atomic_write_bytes(tsv, src.read_bytes())
            return tsv
        zip_path = self.data_dir / ZIP_NAME
        if tsv.is_file() and (not self.verify_checksum or file_sha256(tsv) == TSV_SHA256):
            if zip_path.is_file() and file_sha256(zip_path) != ZIP_SHA256:
                log.warning("%s does not match UCI's sha256: removed (the verified %s is used)", zip_path, TSV_NAME)
                zip_path.unlink()
            return tsv
        if not (zip_path.is_file() and file_sha256(zip_path) == ZIP_SHA256):
            zip_path = download_zip(self.urls, self.data_dir)
        extract_tsv(zip_path, tsv, self.verify_checksum)
        return tsv

    def _write_splits(self, tsv: Path) -> None:
        """Write train/validation/test.csv, unless ones made from the same source and seed exist."""
        manifest_path = self.data_dir / MANIFEST_NAME
        source_sha = file_sha256(tsv)
        if not self._splits_are_current(manifest_path, source_sha):
            df = parse_sms_collection(tsv)
            splits = balance_and_split(df, self.seed, str(tsv))
            counts = {"parsed": _class_counts(df), "balanced": _class_counts(pd.concat(splits.values()))}
            manifest = {"source_sha256": source_sha, "seed": self.seed, "files": {}, "counts": counts}
            for name, split in splits.items():
                data = split[["label", "text"]].to_csv(index=False, lineterminator="\n").encode("utf-8")
                atomic_write_bytes(self.data_dir / f"{name}.csv", data)
                manifest["files"][f"{name}.csv"] = hashlib.sha256(data).hexdigest()
                counts[name] = _class_counts(split)
            # The manifest goes last: splits without a matching manifest are rebuilt.
            atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2).encode())
        elif self._summarized:
            return
        else:
            manifest = json.loads(manifest_path.read_text())
            info("reusing the splits in %s (same source and seed)", self.data_dir)
        self._summarized = True
        for stage, c in manifest["counts"].items():
            info("%-10s %5d messages: %4d ham, %4d spam", stage, c["ham"] + c["spam"], c["ham"], c["spam"])

    def _splits_are_current(self, manifest_path: Path, source_sha: str) -> bool:
        try:
            manifest = json.loads(manifest_path.read_text())
            return (
                manifest["source_sha256"] == source_sha
                and manifest["seed"] == self.seed
                and all(file_sha256(self.data_dir / f) == h for f, h in manifest["files"].items())
                and set(manifest["files"]) == {f"{s}.csv" for s in SPLITS}
                and "counts" in manifest
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    # -- checkpoint state: a run can only be continued on the same splits ---------------------------

    def state_dict(self) -> dict[str, object]:
        manifest = json.loads((self.data_dir / MANIFEST_NAME).read_text())
        return {"seed": self.seed, "splits_sha256": manifest["files"], "pad_length": self.pad_length}

    def load_state_dict(self, state: dict[str, object]) -> None:
        ours = self.state_dict()
        for key, value in state.items():
            if key in ours and ours[key] != value:
                raise DataError(
                    f"the checkpoint was trained on other data: its {key} is {value!r}, this run's is {ours[key]!r} "
                    "(another data.seed, data source or padding); use the same data config or start a new run_name"
                )

    # -- setup: runs on every rank, reads files --------------------------------------------------

    def read_split(self, name: str) -> pd.DataFrame:
        path = self.data_dir / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path} is missing; run prepare_data() first")
        # keep_default_na=False: a message like "NA" or "null" is text, not a missing value.
        return pd.read_csv(path, dtype={"label": int, "text": str}, keep_default_na=False)

    def setup(self, stage: str | None = None) -> None:
        tokenizer = self.tokenizer()
        wanted = {"fit": SPLITS[:2], "validate": ("validation",), "test": ("test",), "predict": ("test",)}
        names = ["train", *wanted.get(stage, SPLITS)] if stage else list(SPLITS)
        for name in dict.fromkeys(names):  # train first: it fixes the padded length
            if name in self.datasets:
                continue
            df = self.read_split(name)
            ids = [tokens[: self.max_length] for tokens in tokenizer.encode_ordinary_batch(df["text"].tolist())]
            self.datasets[name] = TokenizedSplit(ids, df["label"].tolist())
            if name == "train":
                longest = max(len(i) for i in ids)
                self.pad_length = {"longest_train": longest, "batch": None}.get(self.padding, self.padding)
                info(
                    "longest training text: %d tokens; padding=%s -> padded length %s",
                    longest, self.padding, self.pad_length,
                )  # fmt: skip
                if isinstance(self.pad_length, int):
                    for split in self.datasets.values():  # splits tokenised earlier, if any
                        split.ids = [i[: self.pad_length] for i in split.ids]
            elif self.pad_length is not None:
                self.datasets[name].ids = [i[: self.pad_length] for i in ids]

    # -- loaders -----------------------------------------------------------------------------

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, name: str, batching: dict[str, Any]) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            **batching,
            collate_fn=pad_collate(self.pad_length),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        # The order depends only on (seed, epoch): Lightning calls set_epoch, so a resumed run
        # sees the same batches as an uninterrupted one, and each rank a disjoint shard.
        sampler = DistributedSampler(
            self.datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        if self.bucket_by_length:
            lengths = [len(ids) for ids in self.datasets["train"].ids]
            batches = LengthBucketBatchSampler(sampler, lengths, self.batch_size, self.drop_last)
        else:
            batches = BatchSampler(sampler, self.batch_size, self.drop_last)
        return self._loader("train", {"batch_sampler": ResumableBatchSampler(batches, self._batches_done())})

    def _batches_done(self) -> int:
        """Batches of the current epoch already trained, when Lightning restarts mid-epoch from a checkpoint
        (0 when the checkpoint ended the epoch, also one shortened by limit_train_batches: a new one starts)."""
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting:
            return 0
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return 0 if progress.is_last_batch else progress.current.processed

    def eval_dataloader(self, name: str) -> DataLoader:
        """An unshuffled loader over any split (each item once, across all ranks)."""
        rank, world = self._rank_and_world()
        sampler = ShardSampler(len(self.datasets[name]), rank, world)
        return self._loader(name, {"sampler": sampler, "batch_size": self.eval_batch_size})

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
