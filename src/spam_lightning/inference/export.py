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

import base64
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tiktoken
from omegaconf import DictConfig
from safetensors.torch import save_file

from spam_lightning.data.preprocess import GPT2_TIKTOKEN_SHA256, get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.files import OutputPathError, file_sha256, read_json_object, refuse_replacing
from spam_lightning.inference.checkpoint import (
    RECORD_KEY,
    TrainedModel,
    load_trained,
    run_dir_of,
)
from spam_lightning.inference.exported import (
    CARD_NAME,
    CONFIG_NAME,
    EXPORT_FORMAT,
    FILES_KEY,
    FORMAT_PREFIX,
    ONNX_KEY,
    OWN_WEIGHTS_NAME,
    RECORD_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    layout_files,
    portable,
    record_sha256,
    run_metrics,
)
from spam_lightning.inference.hf import (
    HFExportError,
    hf_config,
    hf_state_dict,
    model_card,
    unsupported,
    write_hf_tokenizer,
)
from spam_lightning.inference.onnx import require_export_packages, write_onnx
from spam_lightning.model.net import SpamNet

STAGING_SUFFIX = ".export-tmp"  # the temporary folder an export is written into


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


log = logging.getLogger(__name__)

FORMATS = ("auto", "hf", "spam_lightning", "onnx")  # onnx: auto's layout + model.onnx


def write_export(
    model: TrainedModel,
    out_dir: str | Path,
    tokenizer: tiktoken.Encoding,
    overwrite: bool = False,
    format: str = "auto",
    metrics: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the folder in transformers' layout (format=hf, or auto and onnx when transformers can compute the model)
    or our own (spam_lightning, or auto and onnx when it cannot); onnx adds model.onnx. `metrics` (the run's
    metrics.json) go into the model card.
    out_dir: new, empty, or (overwrite) holding an export of ours, whose files alone are replaced (inference/export.py).
    Returns the paths written."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}")
    reason = unsupported(model.net, model.preprocessing)
    if format == "hf" and reason:
        raise HFExportError(f"cannot export for transformers: {reason}; or export with format=spam_lightning")
    hf = format == "hf" or (format in ("auto", "onnx") and reason is None)
    if format in ("auto", "onnx") and reason:
        log.info("format=%s: spam_lightning's own layout, not transformers' (%s)", format, reason)
    if format == "onnx":
        require_export_packages()  # before anything is written
    out_dir = Path(out_dir)
    previous = previous_export(out_dir)
    if previous and not overwrite:
        raise OutputPathError(
            f"{out_dir} already holds an exported model; pass overwrite=true to replace it (its files only: "
            f"{', '.join(sorted(previous))})"
        )
    refuse_replacing(out_dir, layout_files(hf, format == "onnx"), previous, {}, "out_dir", "the export there")
    state = hf_state_dict(model.net, model.preprocessing, tokenizer) if hf else _own_state(model.net)
    with staged(out_dir, previous) as staging:
        written = _write_files(model, staging, out_dir.absolute().name, tokenizer, state, hf, format, metrics)
    return [out_dir / p.name for p in written]


def _write_files(
    model: TrainedModel,
    out_dir: Path,
    model_name: str,
    tokenizer: tiktoken.Encoding,
    state: dict[str, Any],
    hf: bool,
    format: str,
    metrics: Mapping[str, Any] | None,
) -> list[Path]:
    """The export's files in out_dir (the staging folder), the record file last in the list."""
    weights_file = out_dir / (WEIGHTS_NAME if hf else OWN_WEIGHTS_NAME)
    save_file(state, weights_file, metadata={"format": "pt" if hf else EXPORT_FORMAT})
    paths = [weights_file, out_dir / TOKENIZER_NAME]
    _write_tokenizer(tokenizer, paths[-1])
    record = {
        "format": EXPORT_FORMAT,
        "net": model.net.args(),
        "preprocessing": model.preprocessing.to_dict(),
        "training": portable(model.training),
        "tokenizer_file": TOKENIZER_NAME,
        "weights_sha256": file_sha256(weights_file),
    }
    if hf:
        hf_files = write_hf_tokenizer(tokenizer, out_dir, model.preprocessing.token_limit)
        record[FILES_KEY] = {p.name: file_sha256(p) for p in hf_files}
    if format == "onnx":  # the graph carries the hash of this record so far: of its weights too
        record[ONNX_KEY] = write_onnx(model.net, out_dir, record_sha256(record), model.preprocessing, tokenizer)
        paths += [out_dir / name for name in record[ONNX_KEY]["files"]]
    if hf:
        record["record_sha256"] = record_sha256(record)
        card = out_dir / CARD_NAME
        card.write_text(model_card(model_name, record, metrics), encoding="utf-8")
        config = {**hf_config(record["net"], model.preprocessing), RECORD_KEY: record}
        paths += [*hf_files, card, out_dir / CONFIG_NAME]
    else:
        record["record_sha256"] = record_sha256(record)
        config, paths = record, [*paths, out_dir / RECORD_NAME]
    paths[-1].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def _own_state(net: SpamNet) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def _write_tokenizer(tokenizer: tiktoken.Encoding, dest: Path) -> None:
    """GPT-2's ranks in the .tiktoken format: exactly the bytes of the sha256-pinned file."""
    ranks = sorted(tokenizer._mergeable_ranks.items(), key=lambda item: item[1])
    dest.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks))
    actual = file_sha256(dest)
    if actual != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"{dest}: sha256 {actual} is not GPT-2's {GPT2_TIKTOKEN_SHA256}")


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    tokenizer_file: str | None = None,
    overwrite: bool = False,
    format: str = "auto",
) -> list[Path]:
    """Export a checkpoint (all weights, frozen ones included) into out_dir (default: <run dir>/export)."""
    model = load_trained(ckpt_path)
    out_dir = Path(out_dir) if out_dir else _default_out_dir(Path(ckpt_path))
    metrics = run_metrics(Path(ckpt_path))
    paths = write_export(model, out_dir, get_tokenizer(tokenizer_file), overwrite, format, metrics)
    log.info("exported %s to %s (%s)", ckpt_path, out_dir, ", ".join(p.name for p in paths))
    return paths


def run(cfg: DictConfig) -> list[Path]:
    """`python export.py ckpt_path=... out_dir=... format=...` (conf/export.yaml)."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError("give the checkpoint to export: python export.py ckpt_path=PATH.ckpt")
    paths = export_checkpoint(
        cfg.ckpt_path, cfg.get("out_dir"), cfg.get("tokenizer_file"), cfg.overwrite, cfg.get("format", "auto")
    )
    print(paths[0].parent)
    return paths


def _default_out_dir(ckpt_path: Path) -> Path:
    """<run dir>/export for <run dir>/checkpoints/NAME.ckpt, else NAME-export beside the checkpoint."""
    run_dir = run_dir_of(ckpt_path)
    return run_dir / "export" if run_dir is not None else ckpt_path.with_name(ckpt_path.stem + "-export")
