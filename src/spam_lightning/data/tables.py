"""Labelled texts in CSV/TSV files: read and check them, map labels to class ids, balance, split.

No Lightning and no tokens here (`spam_lightning.data.modules` tokenizes and batches). The SMS recipe
(`spam_lightning.data.sms_spam`) uses the same balancing and splitting; `spam_lightning.data.modules` reads any
table with a text and a label column through these functions.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first text row 2.

Labels (`class_names`, `encode_labels`) are compared exactly as written, after stripping spaces. A file holding two
spellings of one label (`Ham`/`ham`, a Unicode variant, `1`/`01`) is refused rather than made into two classes. A
label is read as a class id (`0`, `1`, ...: ASCII digits) only when the class names are fixed before the data is read
(data.classes, or a trained model's classes) and none of them is a number; classes found in the data are names only,
so one file and the same rows in three files give the same class ids.

One reader for every text file the package takes in (training data, evaluation files, prediction inputs): strict
UTF-8 (`decode_utf8`: the error names the file, line and column), the delimiter from the suffix or given
(`delimiter_for`), and `read_table` (pandas, every cell a string). A bad file is a `DataError` naming file and row.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spam_lightning.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
BALANCE = ("none", "undersample")
INTEGER = re.compile(r"-?[0-9]+")  # ASCII only: str.isdigit also accepts "²", which int() cannot read
CLASS_ID = re.compile(r"[0-9]+")
RESPELT = "differ only in case, Unicode form or leading zeros"
# Why a label is not a class, by what its file is ("all": the one file that is split).
UNKNOWN_BECAUSE = {
    "train": "not in data.classes",
    "all": "not in data.classes",
    "evaluated": "not a class of the model",
}


def delimiter_for(path: Path, delimiter: str | None = None) -> str:
    """The explicit `delimiter`, else the one of the file's suffix (.csv: comma; .tsv/.tab: tab)."""
    if delimiter:
        return delimiter
    try:
        return DELIMITERS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the delimiter from the suffix {path.suffix!r} (expected .csv or .tsv); "
            "set data.delimiter"
        ) from None


def read_labelled_table(
    path: Path,
    text_column: str,
    label_column: str,
    delimiter: str | None = None,
    data: bytes | None = None,
    empty_texts: bool = False,
) -> pd.DataFrame:
    """The columns text and label (both str, as written) of a CSV/TSV file with a header row.

    `data`: the file's bytes when the caller has read (and hashed) them. A row with an empty label raises a
    DataError naming the file and row; so does an empty text, unless `empty_texts` (evaluation skips them as
    prediction does, and counts them)."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path} does not exist") from None
    text = decode_utf8(data, str(path))
    sep = delimiter_for(path, delimiter)
    if not text.strip():
        raise DataError(f"{path}: empty file, expected a header row naming {text_column!r} and {label_column!r}")
    table = read_table(text, str(path), sep)
    missing = [c for c in (text_column, label_column) if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: no column {missing[0]!r} (columns: {list(table.columns)}); set data.text_column / "
            "data.label_column"
        )
    # pandas renames a repeated column ("label" and "label.1") and the first one would be used silently.
    header = pd.read_csv(io.StringIO(text), sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    for column in (text_column, label_column):
        if (count := header.iloc[0].tolist().count(column)) > 1:
            raise DataError(f"{path}, row 1: the header has {count} columns named {column!r}; keep one")
    frame = pd.DataFrame({"text": table[text_column], "label": table[label_column].str.strip()})
    for column in ("label",) if empty_texts else ("text", "label"):
        empty = np.flatnonzero(frame[column].str.strip() == "")
        if len(empty):
            raise DataError(f"{path}, row {int(empty[0]) + 2}: missing {column} ({len(empty)} such rows in all)")
    if frame.empty:
        raise DataError(f"{path}: no rows after the header")
    _refuse_respelt_labels(frame["label"], path)
    return frame


def _spelling(label: str) -> str | int:
    """What the spellings of one label share: its number (1, 01, a full-width 1), else its Unicode compatibility form
    (NFKC), case folded."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    return int(folded) if INTEGER.fullmatch(folded) else folded


def _refuse_respelt_labels(labels: pd.Series, path: Path) -> None:
    """Two spellings of one label in a file (Ham and ham) would silently be two classes: refused, naming a row of
    each (a user who wants them merged fixes the file)."""
    seen: dict[str | int, tuple[str, int]] = {}
    for index, label in labels.drop_duplicates().items():
        row = int(index) + 2
        first, first_row = seen.setdefault(_spelling(label), (label, row))
        if first != label:
            raise DataError(
                f"{path}: the labels {first!r} (row {first_row}) and {label!r} (row {row}) {RESPELT}; labels are "
                "compared exactly as written: write one spelling for each class"
            )


def class_names(train_labels: Sequence[str], classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The class names in class-id order: `classes` when given, else the training labels sorted (numerically
    when every label is an integer, so 0, 1, 2, 10 keep their order)."""
    if classes:
        names = tuple(str(c).strip() for c in classes)
        if len({_spelling(name) for name in names}) != len(names) or len(names) < 2:
            raise DataError(
                f"data.classes must list at least 2 distinct names (not ones that {RESPELT}), got {list(names)}"
            )
        return names
    found = set(train_labels)
    if all(INTEGER.fullmatch(label) for label in found):
        return tuple(sorted(found, key=int))
    return tuple(sorted(found))


def encode_labels(
    labels: pd.Series, classes: Sequence[str], path: Path, split: str, accept_ids: bool, first_row: int = 2
) -> list[int]:
    """Class ids of the labels: a class name, or, with `accept_ids` (the classes were named before the data was read:
    data.classes, a trained model's) and no class named by a number, its id in ASCII digits. An unknown label raises
    a DataError naming the file, row and the known classes."""
    ids = {name: i for i, name in enumerate(classes)}
    accept_ids = accept_ids and not any(INTEGER.fullmatch(name) for name in classes)
    out = []
    for row, label in enumerate(labels.tolist(), start=first_row):
        class_id = ids.get(label)
        if class_id is None and accept_ids and CLASS_ID.fullmatch(label) and int(label) < len(classes):
            class_id = int(label)
        if class_id is None:
            why = UNKNOWN_BECAUSE.get(split, "the training split never has it")
            near = [name for name in classes if _spelling(name) == _spelling(label)]
            hint = f"; the class {near[0]!r} and it {RESPELT}" if near else ""
            raise DataError(f"{path}, row {row}: unknown label {label!r} ({why}; classes: {list(classes)}){hint}")
        out.append(class_id)
    return out


def undersample(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every class sampled down to the smallest class's count, then shuffled (the book's SMS balancing: the
    classes concatenated in class-id order before the shuffle)."""
    minority = int(df["label"].value_counts().min())
    parts = [
        group.sample(minority, random_state=seed) if len(group) > minority else group
        for _, group in sorted(df.groupby("label"))
    ]
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)


def split_by_fractions(
    df: pd.DataFrame,
    fractions: Sequence[float],
    seed: int | None,
    stratify: bool,
    source: str,
    classes: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """train/validation/test parts of `df` of `fractions` (train, validation; test gets the rest).

    stratify=False cuts the rows as they are (the book's SMS split of its shuffled data); stratify=True cuts
    each class in the same proportions, shuffled with `seed`, so every class is in every part, and refuses a
    class with too few rows for that (`classes`: the names of the class ids, for that message)."""
    train_f, val_f = fractions
    if not (0 < train_f < 1 and 0 < val_f < 1 and train_f + val_f < 1):
        raise DataError(f"data.fractions must be two positive numbers summing to < 1, got {list(fractions)}")
    if not stratify:
        n = len(df)
        train_end, val_end = int(n * train_f), int(n * train_f) + int(n * val_f)
        if train_end < 1 or val_end == train_end or val_end >= n:
            raise DataError(f"{source}: {n} rows are too few for a {train_f:g}/{val_f:g}/rest split with no empty part")
        cuts = {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, n)}
        return {name: df[a:b].reset_index(drop=True) for name, (a, b) in cuts.items()}
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for label, group in sorted(df.groupby("label")):
        group = group.sample(frac=1, random_state=seed)
        n = len(group)
        train_end, val_end = int(n * train_f), int(n * train_f) + int(n * val_f)
        if train_end < 1 or val_end == train_end or val_end >= n:
            name = classes[label] if classes else label
            raise DataError(
                f"{source}: class {name!r} has {n} rows, too few for a {train_f:g}/{val_f:g}/rest split with the "
                "class in every part; add examples, or drop the class"
            )
        parts["train"].append(group[:train_end])
        parts["validation"].append(group[train_end:val_end])
        parts["test"].append(group[val_end:])
    return {
        name: pd.concat(frames).sample(frac=1, random_state=seed).reset_index(drop=True)
        for name, frames in parts.items()
    }


def check_classes_present(frames: Mapping[str, pd.DataFrame], classes: Sequence[str], source: str) -> None:
    """Every class needs training examples (a class the head never sees trains nothing)."""
    counts = frames["train"]["label"].value_counts()
    absent = [name for i, name in enumerate(classes) if counts.get(i, 0) == 0]
    if absent:
        raise DataError(f"{source}: no training rows of class {absent[0]!r} (classes: {list(classes)})")


def warn_duplicates(frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Texts found in two splits (a test text seen in training inflates the test metrics): a warning with the
    count per pair of splits; returns the counts."""
    texts = {name: set(frame["text"]) for name, frame in frames.items()}
    counts = {}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            if a in texts and b in texts:
                n = len(texts[a] & texts[b])
                if n:
                    counts[f"{a}/{b}"] = n
    if counts:
        listed = ", ".join(f"{pair}: {n}" for pair, n in counts.items())
        log.warning("the same text is in more than one split (%s distinct texts); deduplicate the data", listed)
    return counts


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_utf8(data: bytes, name: str) -> str:
    """Strict UTF-8 (a BOM is dropped); the error names the file, line and column."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{name}, line {line}: invalid UTF-8 (byte 0x{data[err.start]:02x} at column "
            f"{err.start - line_start + 1}); save the file as UTF-8"
        ) from err


def split_lines(text: str) -> list[str]:
    """One text per line (\\n or \\r\\n); a final newline does not make an extra empty text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_table(text: str, name: str, sep: str) -> pd.DataFrame:
    """A decoded CSV/TSV table with a header row; every cell a string."""
    try:
        # dtype=str and keep_default_na=False: a message "NA" or "null" stays text (as the data module reads).
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{name}: not a valid {'TSV' if sep == chr(9) else 'CSV'} table ({err})") from err
