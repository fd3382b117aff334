"""Your own labelled texts as a LightningDataModule: CSV/TSV files with a text and a label column, any number
of classes (`data=csv`). Reading, checking, balancing and splitting: `spam_lightning.text_csv`; tokenizing and
batching: `spam_lightning.data.TextDataModule`, as for the SMS data.

The data is either three files (train/validation/test, or a folder holding train, validation and test .csv or
.tsv files) used as they are, or one file split by `fractions` with `seed` (stratified: every class in every
split). Nothing is written: the splits are made again, identically, from the recorded files and settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spam_lightning.data import TextDataModule, info
from spam_lightning.errors import ConfigError, DataError
from spam_lightning.preprocess import check_positive_class
from spam_lightning.text_csv import (
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

log = logging.getLogger(__name__)


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
