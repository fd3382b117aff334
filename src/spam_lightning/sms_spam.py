"""The UCI SMS Spam Collection (id 228) as the book prepares it: download, check, parse, balance, split.

No Lightning and no tokens here (`spam_lightning.data` tokenizes and batches): undersample ham to the 747
spam messages, shuffle with a seed, split 70/10/20 (1045/149/300).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spam_lightning.downloads import fetch
from spam_lightning.errors import DataError
from spam_lightning.files import atomic_write_bytes, file_sha256

UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"  # the book's
ZIP_NAME = "sms+spam+collection.zip"
ZIP_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
TSV_NAME = "SMSSpamCollection"  # the one zip member we extract
TSV_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
LABELS = ("ham", "spam")  # class 0, class 1
LABEL_IDS = {name: i for i, name in enumerate(LABELS)}
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.7, 0.1)  # train, validation; test gets the rest
MANIFEST_NAME = "splits.json"


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
        if label not in LABEL_IDS:
            raise DataError(f"{path}, line {number}: unknown label {label!r}, expected 'ham' or 'spam'")
        if not text.strip():
            raise DataError(f"{path}, line {number}: empty text")
        labels.append(LABEL_IDS[label])
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


def class_counts(df: pd.DataFrame) -> dict[str, int]:
    spam = int(df["label"].sum())
    return {"ham": len(df) - spam, "spam": spam}
