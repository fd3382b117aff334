"""Labelled texts as a LightningDataModule (`TextDataModule`): tokenize, pad and batch three splits. The UCI SMS
Spam Collection (`SmsSpamDataModule`: obtain and split the data, `spam_lightning.data.sms_spam`) and any CSV/TSV data
(`spam_lightning.data.modules.CsvDataModule`) provide the splits.

Follows chapter 6 of *Build a Large Language Model (From Scratch)*: encode with GPT-2's BPE and right-pad
with <|endoftext|> (50256) to the longest training text. What that means for a text is recorded once, in
`preprocessing` (`spam_lightning.data.preprocess.Preprocessing`), which checkpoints and exports carry.

Your own labelled texts as a LightningDataModule: CSV/TSV files with a text and a label column, any number
of classes (`data=csv`). Reading, checking, balancing and splitting: `spam_lightning.data.tables`; tokenizing and
batching: `spam_lightning.data.modules.TextDataModule`, as for the SMS data.

The data is either three files (train/validation/test, or a folder holding train, validation and test .csv or
.tsv files) used as they are, or one file split by `fractions` with `seed` (stratified: every class in every
split). Nothing is written: the splits are made again, identically, from the recorded files and settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import tiktoken
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from spam_lightning.data.preprocess import TIKTOKEN_URL, Preprocessing, check_positive_class, get_tokenizer, pad
from spam_lightning.data.samplers import LengthBucketBatchSampler, ResumableBatchSampler, ShardSampler
from spam_lightning.data.sms_spam import (
    BACKUP_URL,
    LABELS,
    POSITIVE_CLASS,
    UCI_URL,
    obtain_tsv,
    read_splits,
    splits_dir,
    write_splits,
)
from spam_lightning.data.tables import (
    BALANCE,
    DELIMITERS,
    SPLITS,
    check_classes_present,
    class_names,
    encode_labels,
    read_labelled_table,
    sha256,
    split_by_fractions,
    undersample,
    warn_duplicates,
)
from spam_lightning.errors import ConfigError, DataError, DownloadError

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)  # one summary, not one per DDP rank

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


def collate(batch: list[tuple[list[int], int]], pad_to: int | None) -> dict[str, torch.Tensor]:
    """Right-pad with <|endoftext|> to `pad_to` tokens, or to the batch's longest when None (`preprocess.pad`)."""
    rows = [ids for ids, _ in batch]
    input_ids, lengths = pad(rows, pad_to)
    # token_ids, the unpadded ids on the CPU, let the frozen-feature cache find a batch's rows without waiting for
    # the GPU. An object array: Lightning moves the batch's tensors without walking through it, as it would a list.
    token_ids = np.empty(len(rows), dtype=object)
    for i, ids in enumerate(rows):
        token_ids[i] = ids
    labels = torch.tensor([label for _, label in batch])
    return {"input_ids": input_ids, "lengths": lengths, "labels": labels, "token_ids": token_ids}


def pad_collate(pad_to: int | None) -> partial[dict[str, torch.Tensor]]:
    return partial(collate, pad_to=pad_to)


# --------------------------------------------------------------------------------------------------
# The DataModule
# --------------------------------------------------------------------------------------------------


class TextDataModule(L.LightningDataModule):
    """Labelled texts in three splits, tokenized, padded and batched. Subclasses obtain the splits:
    `prepare_data` (download, check, write), `_load_frames` (read them once: columns label (class id) and text,
    and a hash per file read) and `labels` (the class names in class-id order)."""

    def __init__(
        self,
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
    ) -> None:
        """
        Args:
            tokenizer_file: a local GPT-2 `.tiktoken` ranks file (sha256-checked, then kept in the cache);
                None: the cached copy, else a download from `tokenizer_url`.
            padding: "longest_train" (the book: every split padded/truncated to the longest training
                text), an int (that fixed length), "batch" (each batch to its own longest), or "auto":
                "batch" unless `pool` is "last", whose result depends on the padding ("longest_train").
            pool: the model's pooling (model.pool): resolves padding="auto"; recorded in `preprocessing`
                (the model records its own pooling in checkpoints).
            bucket_by_length: group training texts of similar length into batches (less padding with
                padding="batch"; the batches are no longer uniformly random).
            max_length: truncate texts to this many tokens (None: only the context length limits).
            context_length: the model's context length; texts are never longer than this.
            batch_size: training batch size (the book: 8); eval_batch_size defaults to it.
            seed: seeds balancing, shuffling before the split, and the training order.
            drop_last: drop the last incomplete training batch (the book: True).
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
        self.datasets: dict[str, TokenizedSplit] = {}
        self.pool = pool
        self.preprocessing: Preprocessing | None = None  # made by setup() from the training split
        self._summarized = False  # the data summary was logged
        self._frames: dict[str, pd.DataFrame] | None = None  # the splits, read once (`_read_splits`)
        self._splits_sha256: dict[str, str] | None = None  # the sha256 of the bytes read, per file
        self.truncated: dict[str, int] = {}  # texts cut to the token limit, per split (after setup)

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names in class-id order."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def positive_class(self) -> str | None:
        """The class a two-class model's threshold and binary metrics are for (None: more classes)."""
        return self.labels[1] if self.num_classes == 2 else None

    def tokenizer(self) -> tiktoken.Encoding:
        return get_tokenizer(self.tokenizer_file, self.tokenizer_url)

    def _load_frames(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """The three splits (columns label: class id, text) and the sha256 of each file read."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Where the training data came from, for checkpoints: evaluation finds and checks the same splits."""
        raise NotImplementedError

    # -- checkpoint state: a run can only be continued on the same splits ---------------------------

    @property
    def pad_length(self) -> int | None:
        """The fixed padded length (None: each batch padded to its longest); known after setup()."""
        return self.preprocessing.pad_length if self.preprocessing is not None else None

    def state_dict(self) -> dict[str, object]:
        """The data settings a checkpoint records: a run is continued on the same splits and batches only. The
        hashes are those of the bytes this run read and trains on (`_read_splits`), not of the files now."""
        keys = ("batch_size", "drop_last", "bucket_by_length", "max_length", "padding", "positive_class")
        batching = {key: getattr(self, key) for key in keys}
        return {"seed": self.seed, "splits_sha256": self._read_splits(), "pad_length": self.pad_length, **batching}

    def train_batches_per_epoch(self, world_size: int = 1) -> int:
        """Training batches each process gets per epoch (after setup)."""
        per_process = -(-len(self.datasets["train"]) // world_size)  # DistributedSampler pads to equal shares
        return per_process // self.batch_size if self.drop_last else -(-per_process // self.batch_size)

    def load_state_dict(self, state: dict[str, object]) -> None:
        ours = self.state_dict()
        for key, value in state.items():
            if key in ours and ours[key] != value:
                raise DataError(
                    f"the checkpoint was trained on other data: its {key} is {value!r}, this run's is {ours[key]!r} "
                    "(another data.seed, data source or padding); use the same data config or start a new run_name"
                )

    # -- setup: runs on every rank, reads files --------------------------------------------------

    def _read_splits(self) -> dict[str, str]:
        """Read the three split files once, each checked as it is read against the manifest (`read_splits`); return
        the sha256 of each file's bytes. The run then uses only what it read (setup, state_dict, record), whatever
        later happens to the files."""
        if self._splits_sha256 is None:
            self._frames, self._splits_sha256 = self._load_frames()
        return dict(self._splits_sha256)

    def read_split(self, name: str) -> pd.DataFrame:
        """One split as this run read it (`_read_splits`: once, checked against the manifest)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        self._read_splits()
        assert self._frames is not None
        return self._frames[name].copy()

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the splits `stage` needs. The first call reads all three split files (checked against the
        manifest); later calls, and every other use of the data in this run, use what it read."""
        tokenizer = self.tokenizer()
        self._read_splits()
        if self.preprocessing is None:  # the training split fixes the padded length
            positive = self.positive_class
            unpadded = Preprocessing(self.labels, self.max_length, None, "batch", self.pool, positive_class=positive)
            longest = max(len(ids) for ids in unpadded.encode(tokenizer, self.read_split("train")["text"].tolist())[0])
            pad_length = {"longest_train": longest, "batch": None}.get(self.padding, self.padding)
            self.preprocessing = Preprocessing(
                self.labels, self.max_length, pad_length, self.padding, self.pool, positive_class=positive
            )
            info("longest training text: %d tokens; padding=%s -> padded length %s", longest, self.padding, pad_length)
            if positive is not None:
                info("positive class: %s (the binary metrics are its; a threshold applies to its P)", positive)
        wanted = {"fit": SPLITS[:2], "validate": ("validation",), "test": ("test",)}
        for name in ["train", *wanted.get(stage, SPLITS)] if stage else SPLITS:
            if name not in self.datasets:
                df = self.read_split(name)
                ids, cut = self.preprocessing.encode(tokenizer, df["text"].tolist())
                self.datasets[name] = TokenizedSplit(ids, df["label"].tolist())
                self.truncated[name] = sum(cut)
                if self.truncated[name]:
                    info(
                        "%s: %d of %d texts longer than %d tokens, truncated",
                        name, self.truncated[name], len(ids), self.preprocessing.token_limit,
                    )  # fmt: skip

    # -- loaders -----------------------------------------------------------------------------

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, name: str, batching: dict[str, Any]) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            **batching,
            collate_fn=pad_collate(self.pad_length),  # the recorded preprocessing's padding
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self) -> DistributedSampler:
        # The order depends only on (seed, epoch): Lightning calls set_epoch, so a resumed run
        # sees the same batches as an uninterrupted one, and each rank a disjoint shard.
        rank, world = self._rank_and_world()
        return DistributedSampler(self.datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        sampler = self._train_sampler()
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
        return self._loader(name, {"sampler": self._eval_sampler(name), "batch_size": self.eval_batch_size})

    def _eval_sampler(self, name: str) -> ShardSampler:
        rank, world = self._rank_and_world()
        return ShardSampler(len(self.datasets[name]), rank, world)

    def token_ids(self, split: str, epoch: int = 0) -> list[list[int]]:
        """Token ids (as the batches carry them, unpadded) of the texts this process reads from `split`
        in `epoch`: its shard under DDP, all of them in one process. In data order, not the epoch's order."""
        if split == "train":
            sampler = self._train_sampler()
            sampler.set_epoch(epoch)
        else:
            sampler = self._eval_sampler(split)
        ids = self.datasets[split].ids
        return [ids[i] for i in sorted(set(sampler))]

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


class SmsSpamDataModule(TextDataModule):
    """The UCI SMS Spam Collection, balanced and split as the book does (`spam_lightning.data.sms_spam`)."""

    def __init__(
        self,
        source: str | None = None,
        data_dir: str = "data/sms_spam",
        verify_checksum: bool = True,
        urls: Sequence[str] = (UCI_URL, BACKUP_URL),
        **batching: Any,
    ) -> None:
        """
        Args:
            source: a local zip, a local extracted `SMSSpamCollection` file, or a URL; None means a
                verified copy in `data_dir`, else a download from UCI (book's backup URL as fallback).
            data_dir: where the zip and the extracted file are kept; the splits of seed S (train/validation/
                test.csv, splits.json) are in its subfolder seed-S (`splits_dir`), so runs with other seeds
                can share it.
            verify_checksum: check the data against UCI's published sha256 (turn off only for your
                own variant of the file).
            urls: download URLs of the UCI zip, tried in order.
            batching: `TextDataModule`'s arguments (tokenizer, padding, batch sizes, seed, ...).
        """
        super().__init__(**batching)
        self.source = source
        self.data_dir = Path(data_dir).expanduser()
        self.verify_checksum = verify_checksum
        self.urls = list(urls)
        self._manifest: dict[str, Any] | None = None  # the splits.json prepare_data() wrote or found current

    @property
    def labels(self) -> tuple[str, ...]:
        return LABELS

    @property
    def positive_class(self) -> str:
        return POSITIVE_CLASS

    @property
    def splits_dir(self) -> Path:
        """The folder of this seed's train/validation/test.csv and splits.json."""
        return splits_dir(self.data_dir, self.seed)

    # -- prepare_data: runs once (rank 0), writes files ----------------------------------------

    def prepare_data(self) -> None:
        """Obtain the data and the vocabulary (download or verify), write the splits. Both downloads are tried
        before failing, so offline use fails once, naming everything missing. Writes nothing when every file is
        current (a read-only data_dir then works)."""
        failed = []
        source = b""
        try:
            source = self._obtain_tsv()
        except DownloadError as err:
            failed.append(err)
        try:
            self.tokenizer()  # once, before the DDP ranks need it
        except DownloadError as err:
            failed.append(err)
        if failed:
            raise DownloadError.combine(failed)
        self._write_splits(source)

    def _obtain_tsv(self) -> bytes:
        return obtain_tsv(self.source, self.data_dir, self.urls, self.verify_checksum)

    def _write_splits(self, source: bytes) -> None:
        """This seed's splits in `splits_dir`, made from the `source` bytes unless current (`write_splits`)."""
        manifest, made = write_splits(source, self.data_dir, self.seed)
        if self._manifest is not None and manifest != self._manifest:
            raise DataError(
                f"the data changed during this run: the splits in {self.splits_dir} are now made from a source with "
                f"sha256 {manifest['source_sha256']}, the run's from {self._manifest['source_sha256']} (another run "
                f"with another data source writing into {self.data_dir}?); give each data source its own "
                "data.data_dir and start again"
            )
        self._manifest = manifest
        if made or not self._summarized:
            if not made:
                info("reusing the splits in %s (same source and seed)", self.splits_dir)
            self._summarized = True
            for stage, c in manifest["counts"].items():
                info("%-10s %5d messages: %4d ham, %4d spam", stage, c["ham"] + c["spam"], c["ham"], c["spam"])

    def _load_frames(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        return read_splits(self.data_dir, self.seed, self._manifest, self.verify_checksum)

    def record(self) -> dict[str, Any]:
        """Where the training data came from, for checkpoints: evaluation finds and checks the same splits."""
        return {
            "source": self.source,
            "data_dir": str(self.data_dir.absolute()),
            "seed": self.seed,
            "verify_checksum": self.verify_checksum,
            "splits_sha256": self.state_dict()["splits_sha256"],
        }


class CsvDataModule(TextDataModule):
    def __init__(
        self,
        path: str | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        delimiter: str | None = None,
        classes: Sequence[str] | None = None,
        fractions: Sequence[float] = (0.7, 0.1),
        stratify: bool = True,
        balance: str = "none",
        positive_class: str | None = None,
        **batching: Any,
    ) -> None:
        """
        Args:
            path: one file (split by `fractions`) or a folder holding train, validation and test files
                (.csv or .tsv); or None and the three `*_file`s.
            train_file, validation_file, test_file: the three splits, used as they are.
            text_column, label_column: the columns of the text and its label (a header row names them).
            delimiter: None: from the suffix (.csv comma, .tsv tab).
            classes: the class names in class-id order; labels are these names or their ids as integers.
                None: the training labels, sorted (numerically if all are integers).
            fractions: train and validation fractions of one file (test gets the rest).
            stratify: split one file per class (each class in each split in the same proportion), shuffled with
                the seed; false: shuffle, then cut.
            balance: none | undersample (every class down to the smallest, as the book does for SMS): of the
                one file before it is split, or of the training split of three files.
            positive_class: two classes only: the class whose probability the threshold applies to and whose
                precision/recall/F1/AUROC the binary metrics are; None: the second class in class-id order (id 1).
            batching: `TextDataModule`'s arguments (tokenizer, padding, batch sizes, seed, ...).
        """
        super().__init__(**batching)
        if balance not in BALANCE:
            raise ConfigError(f"data.balance must be one of {list(BALANCE)}, got {balance!r}")
        if len(fractions) != 2:
            raise ConfigError(f"data.fractions must be [train, validation], got {list(fractions)}")
        self.files = self._find_files(path, {"train": train_file, "validation": validation_file, "test": test_file})
        self.text_column, self.label_column, self.delimiter = text_column, label_column, delimiter
        self.classes = list(classes) if classes else None
        self.fractions = [float(f) for f in fractions]
        self.stratify = stratify
        self.balance = balance
        # An integer label typed on the command line (data.positive_class=1) arrives as an int; class names are text.
        is_int = isinstance(positive_class, int) and not isinstance(positive_class, bool)
        self._positive_class = str(positive_class) if is_int else positive_class
        self._labels: tuple[str, ...] | None = None
        self.duplicates: dict[str, int] = {}

    @staticmethod
    def _find_files(path: str | None, given: Mapping[str, str | None]) -> dict[str, Path]:
        """{"all": file} for one file, else {"train": ..., "validation": ..., "test": ...}."""
        named = {k: Path(v).expanduser() for k, v in given.items() if v}
        if path is None:
            if len(named) != 3:
                raise ConfigError(
                    "data=csv needs data.path (one file or a folder) or all three of data.train_file, "
                    f"data.validation_file, data.test_file; got {sorted(named) or 'none'}"
                )
            return named
        if named:
            raise ConfigError("give either data.path or data.train_file/validation_file/test_file, not both")
        root = Path(path).expanduser()
        if root.is_file():
            return {"all": root}
        if not root.is_dir():
            raise DataError(f"data.path {str(root)!r} does not exist")
        files = {}
        for split in SPLITS:
            found = [root / f"{split}{suffix}" for suffix in DELIMITERS if (root / f"{split}{suffix}").is_file()]
            if len(found) != 1:
                raise DataError(
                    f"{root}: expected one file {split}.csv or {split}.tsv, found {[p.name for p in found] or 'none'}"
                )
            files[split] = found[0]
        return files

    # -- the splits ----------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        self._read_splits()
        assert self._labels is not None
        return self._labels

    @property
    def positive_class(self) -> str | None:
        """data.positive_class, checked against the classes (ConfigError naming them); None: class id 1 of two."""
        if self._positive_class is None:
            return super().positive_class
        check_positive_class(self._positive_class, self.labels, "data.positive_class", ConfigError)
        return self._positive_class

    def prepare_data(self) -> None:
        """The vocabulary (download or cache) and a first read of the data, so bad data (or a data.positive_class that
        is not one of its two classes) fails before training."""
        self.tokenizer()
        self._read_splits()
        _ = self.positive_class

    def _load_frames(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        raw: dict[str, bytes] = {}
        for key, file in self.files.items():
            try:
                raw[key] = file.read_bytes()
            except FileNotFoundError:
                raise DataError(f"{file} does not exist") from None
        tables = {
            key: read_labelled_table(self.files[key], self.text_column, self.label_column, self.delimiter, data)
            for key, data in raw.items()
        }
        names = class_names(tables["all" if "all" in tables else "train"]["label"].tolist(), self.classes)
        if len(names) < 2:
            raise DataError(f"{self.files.get('all', self.files.get('train'))}: only one class {list(names)}")
        accept_ids = bool(self.classes)  # a label may be a class id only when data.classes names the classes
        frames = {
            key: pd.DataFrame(
                {"label": encode_labels(t["label"], names, self.files[key], key, accept_ids), "text": t["text"]}
            )
            for key, t in tables.items()
        }
        if "all" in frames:
            source = str(self.files["all"])
            df = undersample(frames["all"], self.seed) if self.balance == "undersample" else frames["all"]
            if not self.stratify:
                df = df.sample(frac=1, random_state=self.seed).reset_index(drop=True)
            frames = split_by_fractions(df, self.fractions, self.seed, self.stratify, source, names)
        elif self.balance == "undersample":
            frames["train"] = undersample(frames["train"], self.seed)
        check_classes_present(frames, names, str(self.files.get("all", self.files.get("train"))))
        self.duplicates = warn_duplicates(frames)
        self._labels = names
        for split in SPLITS:
            counts = frames[split]["label"].value_counts()
            info(
                "%-10s %6d texts: %s",
                split,
                len(frames[split]),
                ", ".join(f"{counts.get(i, 0)} {n}" for i, n in enumerate(names)),
            )
        return frames, {key: sha256(data) for key, data in raw.items()}

    # -- records -------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What makes the splits: with the files' hashes, the same splits are made again (evaluation)."""
        return {
            "kind": "csv",
            "files": {key: str(file.absolute()) for key, file in self.files.items()},
            "text_column": self.text_column,
            "label_column": self.label_column,
            "delimiter": self.delimiter,
            "classes": list(self.labels),
            "fractions": self.fractions,
            "stratify": self.stratify,
            "balance": self.balance,
            "seed": self.seed,
        }

    def record(self) -> dict[str, Any]:
        return {**self.settings(), "splits_sha256": self._read_splits(), "truncated": dict(self.truncated)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **batching: Any) -> CsvDataModule:
        """The data module of a checkpoint's data record; reading its splits checks the files' hashes."""
        files = dict(record["files"])
        given = {"path": files["all"]} if "all" in files else {f"{k}_file": v for k, v in files.items()}
        keys = ("text_column", "label_column", "delimiter", "classes", "fractions", "stratify", "balance", "seed")
        module = cls(**given, **{k: record[k] for k in keys}, **batching)
        actual, expected = module._read_splits(), record.get("splits_sha256") or {}
        for key, digest in expected.items():
            if actual.get(key) != digest:
                raise DataError(
                    f"{files[key]} is not the file this model was trained with (sha256 {actual.get(key)}, "
                    f"recorded {digest})"
                )
        return module
