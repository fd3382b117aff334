"""The UCI SMS Spam Collection (id 228) as the book prepares it: download, check, parse, balance, split.

No Lightning and no tokens here (`spam_lightning.data.modules` tokenizes and batches): undersample ham to the 747
spam messages, shuffle with a seed, split 70/10/20 (1045/149/300).

Layout of a data folder: the zip and the extracted `SMSSpamCollection` in `data_dir`, the splits of seed S
(train/validation/test.csv and their manifest splits.json) in `data_dir/seed-S/` (`splits_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spam_lightning.data.tables import SPLITS, decode_utf8, read_table, split_by_fractions, split_lines, undersample
from spam_lightning.errors import DataError
from spam_lightning.files import fetch, file_sha256, write_if_changed

log = logging.getLogger(__name__)

UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"  # the book's
ZIP_NAME = "sms+spam+collection.zip"
ZIP_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
TSV_NAME = "SMSSpamCollection"  # the one zip member we extract
TSV_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
LABELS = ("ham", "spam")  # class 0, class 1
POSITIVE_CLASS = "spam"  # what a threshold applies to: spam iff P(spam) > threshold
LABEL_IDS = {name: i for i, name in enumerate(LABELS)}
SPLIT_FRACTIONS = (0.7, 0.1)  # train, validation; test gets the rest
MANIFEST_NAME = "splits.json"


def splits_dir(data_dir: Path, seed: int) -> Path:
    """The folder of the splits made with `seed`: runs with other seeds never write into it."""
    return Path(data_dir) / f"seed-{int(seed)}"


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


def extract_tsv(zip_path: Path, dest: Path, verify: bool = True) -> bytes:
    """Extract only the `SMSSpamCollection` member, to a path we choose (no path traversal); return its bytes.

    `dest` is written only when it does not already hold these bytes (a read-only data folder whose file is
    current is not written)."""
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
    write_if_changed(dest, data)
    return data


# --------------------------------------------------------------------------------------------------
# Parsing, balancing, splitting
# --------------------------------------------------------------------------------------------------


def parse_sms_collection(path: str | Path, data: bytes | None = None) -> pd.DataFrame:
    """Read `label<TAB>text` lines into a DataFrame with columns label (0 ham, 1 spam) and text.

    Each line is split at its first tab; quotes are ordinary characters (pandas' default quoting
    merges lines and loses two messages). A BOM and CRLF endings are accepted. `data`: the file's bytes,
    already read (and checked) by the caller; `path` then only names them in errors.
    """
    path = Path(path)
    raw = path.read_bytes() if data is None else data
    labels, texts = [], []
    for number, decoded in enumerate(split_lines(decode_utf8(raw, str(path))), start=1):
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
    # Like the book: sample the majority class, concatenate ham before spam, shuffle, then cut (not stratified).
    return split_by_fractions(undersample(df, seed), SPLIT_FRACTIONS, seed, stratify=False, source=source)


def class_counts(df: pd.DataFrame) -> dict[str, int]:
    spam = int(df["label"].sum())
    return {"ham": len(df) - spam, "spam": spam}


# --------------------------------------------------------------------------------------------------
# The data folder: the checked source file in data_dir, each seed's splits in data_dir/seed-S
# --------------------------------------------------------------------------------------------------


def obtain_tsv(source: str | None, data_dir: Path, urls: Sequence[str], verify: bool = True) -> bytes:
    """The checked content of `SMSSpamCollection`, from `source` (a zip, the extracted file or a URL), else from
    `data_dir` or a download from `urls`: the bytes the splits are made from. data_dir/SMSSpamCollection holds them
    afterwards, written only when it differs: nothing is written when every file is current."""
    data_dir.mkdir(parents=True, exist_ok=True)  # exist_ok: an existing folder, even a read-only one, is fine
    tsv = data_dir / TSV_NAME
    if source is not None and "://" in source:
        return extract_tsv(download_zip([source], data_dir), tsv, verify)
    if source is not None:
        src = Path(source).expanduser()
        if not src.is_file():
            raise DataError(f"data.source {str(src)!r} does not exist")
        if zipfile.is_zipfile(src) or src.suffix == ".zip":
            if verify:
                check_sha256(src, ZIP_SHA256)
            return extract_tsv(src, tsv, verify)
        data = src.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if verify and actual != TSV_SHA256:
            raise DataError(f"{src}: sha256 is {actual}, expected {TSV_SHA256} (corrupt or different file)")
        if src.resolve() != tsv.resolve():
            write_if_changed(tsv, data)
        return data
    zip_path = data_dir / ZIP_NAME
    if tsv.is_file():
        data = tsv.read_bytes()
        if not verify or hashlib.sha256(data).hexdigest() == TSV_SHA256:
            if zip_path.is_file() and file_sha256(zip_path) != ZIP_SHA256:
                _remove_damaged_zip(zip_path)
            return data
    if not (zip_path.is_file() and file_sha256(zip_path) == ZIP_SHA256):
        zip_path = download_zip(urls, data_dir)
    return extract_tsv(zip_path, tsv, verify)


def _remove_damaged_zip(zip_path: Path) -> None:
    """A zip that does not match UCI's sha256 is never trusted later; the verified extracted file is used."""
    try:
        zip_path.unlink(missing_ok=True)
    except OSError as err:  # e.g. a read-only data_dir: the run does not need the zip
        log.warning("%s does not match UCI's sha256 and could not be removed (%s); it is not used", zip_path, err)
    else:
        log.warning("%s does not match UCI's sha256: removed (the verified %s is used)", zip_path, TSV_NAME)


def write_splits(source: bytes, data_dir: Path, seed: int) -> tuple[dict[str, Any], bool]:
    """Make the splits of `seed` from the `source` bytes in `splits_dir(data_dir, seed)`, unless ones made from the
    same source and seed are there; return the manifest and whether they were made. Only files whose bytes differ
    are written, each atomically: a run with the same seed writing at the same time writes the same bytes."""
    folder = splits_dir(data_dir, seed)
    manifest_path = folder / MANIFEST_NAME
    source_sha = hashlib.sha256(source).hexdigest()
    manifest = current_manifest(manifest_path, source_sha, seed)
    if manifest is not None:
        return manifest, False
    tsv = data_dir / TSV_NAME
    df = parse_sms_collection(tsv, source)
    splits = balance_and_split(df, seed, str(tsv))
    counts = {"parsed": class_counts(df), "balanced": class_counts(pd.concat(splits.values()))}
    manifest = {"source_sha256": source_sha, "seed": seed, "files": {}, "counts": counts}
    for name, split in splits.items():
        data = split[["label", "text"]].to_csv(index=False, lineterminator="\n").encode("utf-8")
        write_if_changed(folder / f"{name}.csv", data)
        manifest["files"][f"{name}.csv"] = hashlib.sha256(data).hexdigest()
        counts[name] = class_counts(split)
    # The manifest goes last: splits without a matching manifest are made again.
    write_if_changed(manifest_path, json.dumps(manifest, indent=2).encode())
    return manifest, True


def current_manifest(manifest_path: Path, source_sha: str, seed: int) -> dict[str, Any] | None:
    """The manifest (splits.json) when it and the three CSVs it names match this source and seed, else None."""
    try:
        manifest = json.loads(manifest_path.read_bytes())
        current = (
            manifest["source_sha256"] == source_sha
            and manifest["seed"] == seed
            and set(manifest["files"]) == {f"{s}.csv" for s in SPLITS}
            and all(file_sha256(manifest_path.parent / f) == h for f, h in manifest["files"].items())
            and "counts" in manifest
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest if current else None


def read_splits(
    data_dir: Path, seed: int, prepared: dict[str, Any] | None = None, verify: bool = True
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The three splits of `seed` and the sha256 of each file's bytes, each file checked against the manifest as it
    is read (the data returned is the data checked). `prepared`: the manifest this process made or found current,
    which the one read must equal; `verify`: the splits must be made from UCI's file."""
    folder = splits_dir(data_dir, seed)
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files, made_with, source_sha = dict(manifest["files"]), manifest["seed"], manifest["source_sha256"]
    except FileNotFoundError:
        raise DataError(f"{manifest_path} is missing; run prepare_data() first") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{manifest_path} is not a valid splits manifest ({err}); run again to remake it") from err
    if prepared is not None and manifest != prepared:
        raise DataError(
            f"{manifest_path} changed since this run prepared the splits (another run with another data source "
            f"writing into {data_dir}?); give each data source its own data.data_dir and start again"
        )
    if made_with != seed:
        raise DataError(f"{manifest_path} records seed {made_with!r}, not this run's data.seed={seed}")
    if verify and source_sha != TSV_SHA256:
        raise DataError(
            f"{manifest_path}: these splits were made from a file with sha256 {source_sha}, not UCI's {TSV_NAME} "
            f"({TSV_SHA256}); run again to remake them, or set data.verify_checksum=false for your own variant of "
            "the data (in its own data.data_dir)"
        )
    frames, hashes = {}, {}
    for name in SPLITS:
        path = folder / f"{name}.csv"
        data, actual = read_split_file(path)
        if actual != files.get(path.name):
            raise DataError(
                f"{path} changed since the splits were made: its sha256 is {actual}, {MANIFEST_NAME} records "
                f"{files.get(path.name)} (edited, or written by another run with another data source in the same "
                "data.data_dir); run again to remake the splits, and give each data source its own data.data_dir"
            )
        frames[name], hashes[path.name] = parse_split_csv(data, path), actual
    return frames, hashes


def read_split_file(path: Path) -> tuple[bytes, str]:
    """A split file's bytes and their sha256: check the hash, then parse these bytes (`parse_split_csv`), so the
    data used is the data checked, whatever happens to the file meanwhile."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; run prepare_data() first") from None
    return data, hashlib.sha256(data).hexdigest()


def parse_split_csv(data: bytes, path: Path) -> pd.DataFrame:
    """The columns label (int) and text of a split file's bytes; `path` names them in errors."""
    try:
        # keep_default_na=False: a message like "NA" or "null" is text, not a missing value.
        frame = read_table(decode_utf8(data, str(path)), str(path), ",")
        frame["label"] = frame["label"].astype(int)
    except (ValueError, KeyError, DataError) as err:
        raise DataError(f"{path}: not a split file with columns label, text ({' '.join(str(err).split())})") from err
    if list(frame.columns) != ["label", "text"]:
        raise DataError(f"{path}: expected the columns label, text, found {list(frame.columns)}")
    return frame
