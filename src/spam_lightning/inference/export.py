"""The exported folder's file names, and how an export goes into out_dir without destroying anything (export.py).

out_dir must be new, empty, or hold an export of ours: one of our record files (spam_lightning.json, or config.json
with our record under "spam_lightning"), of any version of the format. overwrite=true then replaces that export's files
alone, the ones its record lists (names of its layout only: an edited record cannot name others), and leaves anything
else in the folder; a file of the user's with a name the new export writes, or a folder holding other files and no
export of ours, is refused before anything is written.

The new export is written into a temporary folder on out_dir's file system, then moved in (a new out_dir: the folder
renamed whole; else the previous export's files removed, its record first, and the new ones moved in, the record
last): an export that fails or is interrupted leaves out_dir as it was.

The exported model: a self-contained folder that needs no Lightning and no pickle, in one of two layouts.

For transformers (format=hf, and format=auto's choice when transformers can compute the model: pool=last_token):
    config.json          a GPT2Config of GPT2ForSequenceClassification, and our record under "spam_lightning"
    model.safetensors    GPT2ForSequenceClassification's tensors (transformer.*, score.weight; hf_export.py)
    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json   (hf_tokenizer.py)
    README.md            the model card (model_card.py)
    gpt2.tiktoken        the GPT-2 BPE ranks file (sha256-pinned), so predict.py needs no download

spam_lightning's own (format=spam_lightning, and auto's choice for pool=last|first|mean):
    spam_lightning.json         the record
    spam_lightning.safetensors  every weight of the SpamNet (keys gpt.*), frozen ones included
    gpt2.tiktoken
  It has no config.json and no model.safetensors, so transformers refuses it instead of loading random weights.
  format=onnx (any pooling) adds model.onnx (onnx_model.py), recorded under "onnx" with its sha256; predict.py
  backend=onnxruntime runs it, backend=torch the safetensors weights of the same folder.

The record: format, net (SpamNet.args()), preprocessing (Preprocessing.to_dict()), training (where it came from:
checkpoint file name, hyper-parameters, data, frozen weights; no local paths), tokenizer_file, the weights' sha256
(and the transformers files' or model.onnx's sha256), and record_sha256: the sha256 of all of it but training, so an
edited record is refused rather than silently predicting otherwise. model.onnx carries the record_sha256 of the record
before its "onnx" entry, which covers the weights' sha256: a graph from another export (of the same recipe too) is
refused even where its sha256 is edited into the record.

out_dir: new, empty, or holding an export of ours, whose files alone overwrite=true replaces; a folder of the user's
is refused (export_folder.py).

`write_export` and `read_export` are the format's only writer and reader; `inference.Predictor.from_dir`
(`python predict.py model_dir=FOLDER`) loads a folder of either layout through `read_export`, which treats it as
untrusted: every value is checked, and the files the record names must lie inside the folder.
"""

from __future__ import annotations

import base64
import hashlib
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
from safetensors.torch import load_file, save_file

from spam_lightning.data.preprocess import GPT2_TIKTOKEN_SHA256, Preprocessing, get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.files import OutputPathError, file_sha256, read_json_object, refuse_replacing
from spam_lightning.inference.checkpoint import (
    RECORD_KEY,
    TrainedModel,
    check_finite,
    load_net_state,
    load_trained,
    run_dir_of,
)
from spam_lightning.inference.hf import FILES as HF_TOKENIZER_FILES
from spam_lightning.inference.hf import (
    HFExportError,
    config_differences,
    hf_config,
    hf_state_dict,
    model_card,
    net_state,
    unsupported,
    write_hf_tokenizer,
)
from spam_lightning.inference.onnx import ONNX_DATA_NAME, ONNX_NAME, OnnxNet, require_export_packages, write_onnx
from spam_lightning.model.net import SpamNet

# ---- from export_folder.py ----
FORMAT_PREFIX = "spam_lightning.training.module/"  # the record's "format", then its version
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


# ---- from export.py ----
log = logging.getLogger(__name__)

EXPORT_FORMAT = FORMAT_PREFIX + "4"  # refused: /1 (no preprocessing record), /2 (config.json + model.safetensors of
# our own layout, which transformers mistook for GPT-2), /3 (record_sha256 of net + preprocessing only, not the weights)
FORMATS = ("auto", "hf", "spam_lightning", "onnx")  # onnx: our own layout + model.onnx
UNBOUND = ("training", "record_sha256")  # what record_sha256 leaves out: provenance, and itself


def write_export(
    model: TrainedModel,
    out_dir: str | Path,
    tokenizer: tiktoken.Encoding,
    overwrite: bool = False,
    format: str = "auto",
    metrics: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the folder in transformers' layout (format=hf, or auto when transformers can compute the model) or
    our own (spam_lightning; onnx: with model.onnx too). `metrics` (the run's metrics.json) go into the model card.
    out_dir: new, empty, or (overwrite) holding an export of ours, whose files alone are replaced (export_folder.py).
    Returns the paths written."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}")
    reason = unsupported(model.net, model.preprocessing)
    if format == "hf" and reason:
        raise HFExportError(f"cannot export for transformers: {reason}; or export with format=spam_lightning")
    hf = format == "hf" or (format == "auto" and reason is None)
    if format == "auto" and reason:
        log.info("format=auto: spam_lightning's own layout, not transformers' (%s)", reason)
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
    if format == "onnx":  # the graph carries the hash of this record so far: of its weights too
        record[ONNX_KEY] = write_onnx(model.net, out_dir, record_sha256(record), model.preprocessing, tokenizer)
        paths += [out_dir / name for name in record[ONNX_KEY]["files"]]
    if hf:
        hf_files = write_hf_tokenizer(tokenizer, out_dir, model.preprocessing.token_limit)
        record[FILES_KEY] = {p.name: file_sha256(p) for p in hf_files}
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


def record_sha256(record: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of the record without `UNBOUND`: the format, net, preprocessing, the tokenizer
    file, the weights' sha256 (two exports of one recipe differ in it), and those of the transformers files and of
    model.onnx. training is left out: it says where the model came from and changes no prediction."""
    bound = {key: value for key, value in record.items() if key not in UNBOUND}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def portable(training: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance without local absolute paths: a file keeps its name (the checkpoint's, a weights file's),
    and the data folder and source become null (evaluation then looks in data/sms_spam or takes data_dir=)."""

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, key) for v in value]
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
            return None if key in ("data_dir", "source") else Path(value).name
        return value

    return clean(training, "")


def _write_tokenizer(tokenizer: tiktoken.Encoding, dest: Path) -> None:
    """GPT-2's ranks in the .tiktoken format: exactly the bytes of the sha256-pinned file."""
    ranks = sorted(tokenizer._mergeable_ranks.items(), key=lambda item: item[1])
    dest.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks))
    actual = file_sha256(dest)
    if actual != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"{dest}: sha256 {actual} is not GPT-2's {GPT2_TIKTOKEN_SHA256}")


def _read_record(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None, Path, Path]:
    """(the record, config.json's content in transformers' layout else None, the record's file, the weights)."""
    record_file, config_file = model_dir / RECORD_NAME, model_dir / CONFIG_NAME
    hf = not record_file.is_file()
    source = config_file if hf else record_file
    weights_file = model_dir / (WEIGHTS_NAME if hf else OWN_WEIGHTS_NAME)
    if not source.is_file():
        raise CheckpointError(f"{model_dir} is not an exported model: neither {RECORD_NAME} nor {CONFIG_NAME} is there")
    try:
        content = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(content).__name__}")
    record = content.get(RECORD_KEY) if hf else content
    if hf and not isinstance(record, dict):
        old = str(content.get("format", "")).startswith("spam_lightning.")
        raise CheckpointError(
            f"{source}: exported by an earlier version (format {content.get('format')!r}): export the checkpoint again"
            if old
            else f"{source}: not a spam_lightning export (no {RECORD_KEY!r} record)"
        )
    if not weights_file.is_file():
        raise CheckpointError(f"{model_dir} is not an exported model: {weights_file.name} is missing")
    return record, content if hf else None, source, weights_file


def read_export(model_dir: str | Path, backend: str = "torch") -> tuple[TrainedModel, Path | None]:
    """The trained model in an exported folder (either layout), and its bundled tokenizer file (None if absent).
    backend=onnxruntime: the model's net is an OnnxNet running the folder's model.onnx (its weights file unread).

    The folder is untrusted: the record must be unedited since export (record_sha256), its values valid and
    consistent, its tokenizer_file (and model.onnx) inside the folder with the recorded sha256; anything else is a
    CheckpointError naming the file and key."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        problem = "is a file, not a folder: use ckpt_path= for a checkpoint" if model_dir.exists() else "does not exist"
        raise CheckpointError(f"model_dir {str(model_dir)!r} {problem}")
    config, hf_fields, config_file, weights_file = _read_record(model_dir)
    if config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{config_file}: format {config.get('format')!r}, expected {EXPORT_FORMAT!r} (exported by another "
            "version: export the checkpoint again)"
        )
    for key in ("record_sha256", "weights_sha256"):
        if not isinstance(config.get(key), str):
            raise CheckpointError(
                f"{config_file}: {key} is missing or not a string (every export writes it): export the checkpoint again"
            )
    if record_sha256(config) != config["record_sha256"]:
        raise CheckpointError(
            f"{config_file}: the record does not match its record_sha256: {config_file.name} was edited after export "
            "(refused: it could change the predictions); export the checkpoint again"
        )
    if backend == "torch" and file_sha256(weights_file) != config["weights_sha256"]:
        raise CheckpointError(f"{weights_file}: sha256 differs from {config_file.name}'s weights_sha256 (corrupt?)")
    try:
        net = SpamNet.from_args(config.get("net"), device="meta")
    except ValueError as err:
        raise CheckpointError(f"{config_file}: {err}") from err
    preprocessing = Preprocessing.from_dict(config.get("preprocessing"), str(config_file))
    preprocessing.check_fits(net.gpt.cfg, net.num_classes, net.pool, str(config_file))
    training = config.get("training") or {}
    if not isinstance(training, dict):
        raise CheckpointError(f"{config_file}: training must be a mapping, got {type(training).__name__}")
    if hf_fields is not None:
        _check_transformers_fields(model_dir, config_file, hf_fields, net, preprocessing)
    bundled = _bundled_file(model_dir, config.get("tokenizer_file", TOKENIZER_NAME), config_file)
    if backend == "onnxruntime":
        return TrainedModel(_onnx_net(model_dir, config, config_file, net), preprocessing, training), bundled
    try:
        state = load_file(weights_file)
    except Exception as err:
        raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from err
    if hf_fields is not None:
        state = net_state(state, net.gpt.cfg, net.num_classes, str(weights_file))
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    differing = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if differing:  # load_state_dict's own message spans many lines
        raise CheckpointError(
            f"{weights_file}: the weights do not fit {config_file.name}'s net ({len(differing)} tensors differ in "
            f"name or shape, e.g. {differing[0]!r})"
        )
    load_net_state(net, state, str(weights_file))
    check_finite(net, f"exported model {str(model_dir)!r}")  # as load_trained checks a checkpoint's
    return TrainedModel(net.eval(), preprocessing, training), bundled


def _check_transformers_fields(
    model_dir: Path, config_file: Path, fields: Mapping[str, Any], net: SpamNet, pre: Preprocessing
) -> None:
    """What transformers reads (config.json's GPT2Config, the tokenizer files) must be what the record says: one
    model for both readers."""
    reason = unsupported(net, pre)
    if reason:
        raise CheckpointError(f"{config_file}: a transformers export of a model transformers cannot compute ({reason})")
    differing = config_differences(fields, net.args(), pre)
    if differing:
        raise CheckpointError(
            f"{config_file}: transformers' fields {differing} differ from the {RECORD_KEY} record (edited after "
            "export?); export the checkpoint again"
        )
    hashes = fields[RECORD_KEY].get(FILES_KEY)
    if not isinstance(hashes, dict) or set(hashes) != set(HF_TOKENIZER_FILES):
        raise CheckpointError(f"{config_file}: {RECORD_KEY}.{FILES_KEY} must name {list(HF_TOKENIZER_FILES)}")
    for name in HF_TOKENIZER_FILES:
        path = model_dir / name
        if not path.is_file() or file_sha256(path) != hashes[name]:
            raise CheckpointError(f"{path}: missing, or its sha256 differs from {config_file.name}'s {FILES_KEY}")


def _onnx_net(model_dir: Path, config: Mapping[str, Any], config_file: Path, net: SpamNet) -> OnnxNet:
    """The folder's model.onnx in an onnxruntime session, once its files match the record's sha256."""
    entry = config.get(ONNX_KEY)
    if entry is None:
        raise CheckpointError(
            f"{model_dir} has no {ONNX_NAME} (exported without format=onnx): backend=onnxruntime needs a folder "
            "written by `python export.py ckpt_path=... format=onnx`; or predict with backend=torch"
        )
    files = entry.get("files") if isinstance(entry, dict) else None
    if not (
        isinstance(files, dict)
        and ONNX_NAME in files
        and set(files) <= {ONNX_NAME, ONNX_DATA_NAME}
        and all(isinstance(sha, str) for sha in files.values())
    ):
        raise CheckpointError(f"{config_file}: {ONNX_KEY}.files must map {ONNX_NAME} (and {ONNX_DATA_NAME}) to sha256")
    for name, sha in files.items():
        path = _bundled_file(model_dir, name, config_file, f"{ONNX_KEY}.files")
        if path is None or file_sha256(path) != sha:
            raise CheckpointError(
                f"{model_dir / name}: missing, or its sha256 differs from {config_file.name}'s {ONNX_KEY}.files"
            )
    bound = record_sha256({key: value for key, value in config.items() if key != ONNX_KEY})  # what write_export gave it
    return OnnxNet(model_dir / ONNX_NAME, bound, net.num_classes, net.pool)


def _bundled_file(model_dir: Path, name: Any, config_file: Path, key: str = "tokenizer_file") -> Path | None:
    """The file the record's `key` names (None if absent), which must lie inside model_dir: no absolute path, no
    .., no symlink out of the folder."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{config_file}: {key} must be a file name inside {model_dir}, got {name!r}")
    try:
        path = (model_dir / name).resolve()
        inside = model_dir.resolve() in path.parents
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise CheckpointError(f"{config_file}: {key} {name!r} cannot be resolved ({err})") from err
    if not inside:
        raise CheckpointError(
            f"{config_file}: {key} {name!r} is outside the model folder (it resolves to {path}); refused"
        )
    return path if path.is_file() else None


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


def run_metrics(ckpt_path: Path) -> dict[str, Any] | None:
    """The run's metrics.json when `ckpt_path` is the run's best checkpoint (whose metrics it holds), else None."""
    run_dir = run_dir_of(ckpt_path)
    metrics_file = run_dir / "metrics.json" if run_dir is not None else None
    if metrics_file is None or not metrics_file.is_file():
        return None
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        best = Path(metrics["best_checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metrics if best.name == ckpt_path.name and best.parent.name == ckpt_path.parent.name else None


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
