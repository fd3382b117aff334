"""The exported model: a self-contained folder that needs no Lightning and no pickle, in one of two layouts.

For transformers (format=hf, and format=auto's choice when transformers can compute the model: pool=last_token):
    config.json          a GPT2Config of GPT2ForSequenceClassification, and our record under "spam_lightning"
    model.safetensors    GPT2ForSequenceClassification's tensors (transformer.*, score.weight; inference/hf.py)
    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json   (inference/hf.py)
    README.md            the model card (inference/hf.py)
    gpt2.tiktoken        the GPT-2 BPE ranks file (sha256-pinned), so predict.py needs no download

spam_lightning's own (format=spam_lightning, and auto's choice for pool=last|first|mean):
    spam_lightning.json         the record
    spam_lightning.safetensors  every weight of the SpamNet (keys gpt.*), frozen ones included
    gpt2.tiktoken
  It has no config.json and no model.safetensors, so transformers refuses it instead of loading random weights.

format=onnx (any pooling) is format=auto's layout plus model.onnx (inference/onnx.py), recorded under "onnx" with its
sha256; predict.py backend=onnxruntime runs it, backend=torch the safetensors weights of the same folder. In
transformers' layout (pool=last_token) that is the folder Hugging Face Optimum's ORTModelForSequenceClassification
loads: config.json, the tokenizer files, model.onnx with inputs input_ids and attention_mask and output logits.

The record: format, net (SpamNet.args()), preprocessing (Preprocessing.to_dict()), training (where it came from:
checkpoint file name, hyper-parameters, data, frozen weights; no local paths), tokenizer_file, the weights' sha256
(and the transformers files' and model.onnx's sha256), and record_sha256: the sha256 of all of it but training, so an
edited record is refused rather than silently predicting otherwise. model.onnx carries the record_sha256 of the record
before its "onnx" entry, which covers the weights' sha256: a graph from another export (of the same recipe too) is
refused even where its sha256 is edited into the record.

out_dir: new, empty, or holding an export of ours, whose files alone overwrite=true replaces; a folder of the user's
is refused (inference/export.py).

`write_export` and `read_export` are the format's only writer and reader; `inference.Predictor.from_dir`
(`python predict.py model_dir=FOLDER`) loads a folder of either layout through `read_export`, which treats it as
untrusted: every value is checked, and the files the record names must lie inside the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from spam_lightning.data.preprocess import Preprocessing
from spam_lightning.errors import CheckpointError
from spam_lightning.files import file_sha256
from spam_lightning.inference.checkpoint import (
    RECORD_KEY,
    TrainedModel,
    check_finite,
    load_net_state,
    run_dir_of,
)
from spam_lightning.inference.hf import FILES as HF_TOKENIZER_FILES
from spam_lightning.inference.hf import (
    config_differences,
    net_state,
    unsupported,
)
from spam_lightning.inference.onnx import ONNX_DATA_NAME, ONNX_NAME, OnnxNet
from spam_lightning.model.net import SpamNet

FORMAT_PREFIX = "spam_lightning.classifier/"  # the record's "format", then its version


CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"  # transformers' layout


RECORD_NAME, OWN_WEIGHTS_NAME = "spam_lightning.json", "spam_lightning.safetensors"  # our own layout


TOKENIZER_NAME = "gpt2.tiktoken"


FILES_KEY = "transformers_files_sha256"  # the record's sha256 of the transformers tokenizer files


ONNX_KEY = "onnx"  # format=onnx: the graph's files and their sha256 (onnx_model.write_onnx)


def layout_files(transformers: bool, onnx: bool = False) -> tuple[str, ...]:
    """Every file name an export of this layout may write (onnx: model.onnx and its weights beside it too)."""
    graph = (ONNX_NAME, ONNX_DATA_NAME) if onnx else ()
    if transformers:
        return (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, *HF_TOKENIZER_FILES, CARD_NAME, *graph)
    return (RECORD_NAME, OWN_WEIGHTS_NAME, TOKENIZER_NAME, *graph)


EXPORT_FORMAT = FORMAT_PREFIX + "4"  # refused: /1 (no preprocessing record), /2 (config.json + model.safetensors of
# our own layout, which transformers mistook for GPT-2), /3 (record_sha256 of net + preprocessing only, not the weights)


UNBOUND = ("training", "record_sha256")  # what record_sha256 leaves out: provenance, and itself


def record_sha256(record: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of the record without `UNBOUND`: the format, net, preprocessing, the tokenizer
    file, the weights' sha256 (two exports of one recipe differ in it), and those of the transformers files and of
    model.onnx. training is left out: it says where the model came from and changes no prediction."""
    bound = {key: value for key, value in record.items() if key not in UNBOUND}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
