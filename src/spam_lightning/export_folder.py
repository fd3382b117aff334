"""The exported folder's file names, and how an export goes into out_dir without destroying anything (export.py).

out_dir must be new, empty, or hold an export of ours: one of our record files (spam_lightning.json, or config.json
with our record under "spam_lightning"), of any version of the format. overwrite=true then replaces that export's files
alone, the ones its record lists (names of its layout only: an edited record cannot name others), and leaves anything
else in the folder; a file of the user's with a name the new export writes, or a folder holding other files and no
export of ours, is refused before anything is written.

The new export is written into a temporary folder on out_dir's file system, then moved in (a new out_dir: the folder
renamed whole; else the previous export's files removed, its record first, and the new ones moved in, the record
last): an export that fails or is interrupted leaves out_dir as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spam_lightning.checkpoint import RECORD_KEY
from spam_lightning.files import OutputPathError, read_json_object
from spam_lightning.hf_tokenizer import FILES as HF_TOKENIZER_FILES
from spam_lightning.onnx_model import ONNX_DATA_NAME, ONNX_NAME

FORMAT_PREFIX = "spam_lightning.classifier/"  # the record's "format", then its version
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"  # transformers' layout
RECORD_NAME, OWN_WEIGHTS_NAME = "spam_lightning.json", "spam_lightning.safetensors"  # our own layout
TOKENIZER_NAME = "gpt2.tiktoken"
FILES_KEY = "transformers_files_sha256"  # the record's sha256 of the transformers tokenizer files
ONNX_KEY = "onnx"  # format=onnx: the graph's files and their sha256 (onnx_model.write_onnx)
STAGING_SUFFIX = ".export-tmp"  # the temporary folder an export is written into


def layout_files(transformers: bool, onnx: bool = False) -> tuple[str, ...]:
    """Every file name an export of this layout may write (onnx: model.onnx and its weights beside it too)."""
    if transformers:
        return (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, *HF_TOKENIZER_FILES, CARD_NAME)
    return (RECORD_NAME, OWN_WEIGHTS_NAME, TOKENIZER_NAME, *((ONNX_NAME, ONNX_DATA_NAME) if onnx else ()))


def previous_export(out_dir: Path) -> set[str]:
    """The files of the export of ours in out_dir, as its record lists them (empty: no folder, or an empty one).
    A folder holding anything else and no export of ours is refused."""
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise OutputPathError(f"out_dir {str(out_dir)!r} is a file, not a folder")
    found = sorted(p.name for p in out_dir.iterdir() if not p.name.endswith(STAGING_SUFFIX))  # an export's, killed
    files: set[str] = set()
    for name in (RECORD_NAME, CONFIG_NAME):
        content = read_json_object(out_dir / name) or {}
        record = content.get(RECORD_KEY, content) if name == CONFIG_NAME else content
        if isinstance(record, dict) and str(record.get("format", "")).startswith(FORMAT_PREFIX):
            files |= {name, *_listed_files(record, transformers=name == CONFIG_NAME)}
    if found and not files:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise OutputPathError(
            f"out_dir {str(out_dir)!r} is not empty and holds no exported model ({RECORD_NAME}, or {CONFIG_NAME} with "
            f"a {RECORD_KEY!r} record): it holds {shown}. Export into a new or empty folder"
        )
    return files


def _listed_files(record: Mapping[str, Any], transformers: bool) -> set[str]:
    """The files a record lists (its weights, tokenizer files, model.onnx; the model card of transformers' layout)
    that have names of its layout."""

    def keys(value: Any) -> set[str]:
        return {str(key) for key in value} if isinstance(value, dict) else set()

    onnx = record.get(ONNX_KEY)
    listed = {WEIGHTS_NAME if transformers else OWN_WEIGHTS_NAME, str(record.get("tokenizer_file"))}
    listed |= keys(record.get(FILES_KEY)) | keys(onnx.get("files") if isinstance(onnx, dict) else None)
    if transformers and FILES_KEY in record:  # since format /3, with a model card
        listed.add(CARD_NAME)
    return listed & set(layout_files(transformers, onnx=True))


@contextmanager
def staged(out_dir: Path, previous: set[str]) -> Iterator[Path]:
    """A new temporary folder to write the export into; when the block ends without an error, its files move into
    out_dir, replacing the previous export's files; in any case the temporary folder goes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    beside = out_dir if out_dir.is_dir() else out_dir.parent  # on out_dir's file system (it may be a mount point)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=STAGING_SUFFIX, dir=beside))
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        for path in staging.iterdir():  # safetensors writes 0600; give the usual permissions
            os.chmod(path, 0o666 & ~umask)
        if not out_dir.exists():
            os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes a 0700 folder
            staging.rename(out_dir)
            return
        records_first = sorted(previous, key=lambda name: name not in (RECORD_NAME, CONFIG_NAME))
        for name in records_first:  # never a folder whose record describes files that are gone
            (out_dir / name).unlink(missing_ok=True)
        for path in sorted(staging.iterdir(), key=lambda path: path.name in (RECORD_NAME, CONFIG_NAME)):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
