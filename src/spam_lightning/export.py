"""The exported model format: a self-contained folder that needs no Lightning and no pickle.

    model.safetensors   every weight of the SpamNet (keys gpt.*), frozen ones included
    config.json         format, net (SpamNet.args()), preprocessing (Preprocessing.to_dict()), where it came
                        from (checkpoint, hyper-parameters, data, frozen weights), the weights' sha256, and
                        record_sha256: the sha256 of net + preprocessing (what predictions depend on), so an
                        edited config.json is refused rather than silently predicting otherwise
    gpt2.tiktoken       the GPT-2 BPE ranks file (sha256-pinned), so predicting needs no download

`write_export` and `read_export` are the format's only writer and reader; `inference.Predictor.from_dir`
(`python predict.py model_dir=FOLDER`) loads a folder through `read_export`, which treats the folder as
untrusted: every value is checked, and the files config.json names must lie inside the folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tiktoken
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from spam_lightning.checkpoint import TrainedModel, check_finite, load_net_state, load_trained, run_dir_of
from spam_lightning.errors import CheckpointError
from spam_lightning.files import file_sha256
from spam_lightning.net import SpamNet
from spam_lightning.preprocess import Preprocessing
from spam_lightning.tokenizer import GPT2_TIKTOKEN_SHA256, get_tokenizer

log = logging.getLogger(__name__)

EXPORT_FORMAT = "spam_lightning.classifier/2"  # /1 (before the preprocessing record): refused
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "gpt2.tiktoken"


def write_export(
    model: TrainedModel, out_dir: str | Path, tokenizer: tiktoken.Encoding, overwrite: bool = False
) -> list[Path]:
    """Write model.safetensors, gpt2.tiktoken and config.json (last) into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an exported model; pass overwrite=true to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file, tokenizer_file, config_file = out_dir / WEIGHTS_NAME, out_dir / TOKENIZER_NAME, out_dir / CONFIG_NAME
    config_file.unlink(missing_ok=True)  # a folder without config.json is never taken for a complete export

    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, weights_file, metadata={"format": EXPORT_FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_file, 0o666 & ~umask)  # safetensors writes 0600; give the usual permissions
    _write_tokenizer(tokenizer, tokenizer_file)
    config = {
        "format": EXPORT_FORMAT,
        "net": model.net.args(),
        "preprocessing": model.preprocessing.to_dict(),
        "training": model.training,
        "tokenizer_file": TOKENIZER_NAME,
        "weights_sha256": file_sha256(weights_file),
    }
    config["record_sha256"] = record_sha256(config)
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [weights_file, tokenizer_file, config_file]


def record_sha256(config: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of what in config.json determines predictions: net and preprocessing."""
    record = {"net": config.get("net"), "preprocessing": config.get("preprocessing")}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_tokenizer(tokenizer: tiktoken.Encoding, dest: Path) -> None:
    """GPT-2's ranks in the .tiktoken format: exactly the bytes of the sha256-pinned file."""
    ranks = sorted(tokenizer._mergeable_ranks.items(), key=lambda item: item[1])
    dest.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks))
    actual = file_sha256(dest)
    if actual != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"{dest}: sha256 {actual} is not GPT-2's {GPT2_TIKTOKEN_SHA256}")


def read_export(model_dir: str | Path) -> tuple[TrainedModel, Path | None]:
    """The trained model in an exported folder, and its bundled tokenizer file (None if absent).

    The folder is untrusted: config.json must be unedited since export (record_sha256), its values valid and
    consistent, its tokenizer_file inside the folder; anything else is a CheckpointError naming the key."""
    model_dir = Path(model_dir)
    config_file, weights_file = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise CheckpointError(f"{model_dir} is not an exported model: {needed.name} is missing")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
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
            f"{config_file}: net/preprocessing do not match record_sha256: config.json was edited after export "
            "(refused: it would change the predictions); export the checkpoint again"
        )
    if file_sha256(weights_file) != config["weights_sha256"]:
        raise CheckpointError(f"{weights_file}: sha256 differs from config.json's weights_sha256 (corrupt?)")
    try:
        net = SpamNet.from_args(config.get("net"), device="meta")
    except ValueError as err:
        raise CheckpointError(f"{config_file}: {err}") from err
    preprocessing = Preprocessing.from_dict(config.get("preprocessing"), str(config_file))
    preprocessing.check_fits(net.gpt.cfg, net.num_classes, net.pool, str(config_file))
    training = config.get("training") or {}
    if not isinstance(training, dict):
        raise CheckpointError(f"{config_file}: training must be a mapping, got {type(training).__name__}")
    bundled = _bundled_file(model_dir, config.get("tokenizer_file", TOKENIZER_NAME), config_file)
    try:
        state = load_file(weights_file)
    except Exception as err:
        raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from err
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    differing = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if differing:  # load_state_dict's own message spans many lines
        raise CheckpointError(
            f"{weights_file}: the weights do not fit config.json's net ({len(differing)} tensors differ in name or "
            f"shape, e.g. {differing[0]!r})"
        )
    load_net_state(net, state, str(weights_file))
    check_finite(net, f"exported model {str(model_dir)!r}")  # as load_trained checks a checkpoint's
    return TrainedModel(net.eval(), preprocessing, training), bundled


def _bundled_file(model_dir: Path, name: Any, config_file: Path) -> Path | None:
    """The file config.json's tokenizer_file names (None if absent), which must lie inside model_dir: no
    absolute path, no .., no symlink out of the folder."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{config_file}: tokenizer_file must be a file name inside {model_dir}, got {name!r}")
    try:
        path = (model_dir / name).resolve()
        inside = model_dir.resolve() in path.parents
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise CheckpointError(f"{config_file}: tokenizer_file {name!r} cannot be resolved ({err})") from err
    if not inside:
        raise CheckpointError(
            f"{config_file}: tokenizer_file {name!r} is outside the model folder (it resolves to {path}); refused"
        )
    return path if path.is_file() else None


def export_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path | None = None, tokenizer_file: str | None = None, overwrite: bool = False
) -> list[Path]:
    """Export a checkpoint (all weights, frozen ones included) into out_dir (default: <run dir>/export)."""
    model = load_trained(ckpt_path)
    out_dir = Path(out_dir) if out_dir else _default_out_dir(Path(ckpt_path))
    paths = write_export(model, out_dir, get_tokenizer(tokenizer_file), overwrite=overwrite)
    log.info("exported %s to %s (%s)", ckpt_path, out_dir, ", ".join(p.name for p in paths))
    return paths


def run(cfg: DictConfig) -> list[Path]:
    """`python export.py ckpt_path=... out_dir=...` (conf/export.yaml)."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError("give the checkpoint to export: python export.py ckpt_path=PATH.ckpt")
    paths = export_checkpoint(cfg.ckpt_path, cfg.get("out_dir"), cfg.get("tokenizer_file"), cfg.overwrite)
    print(paths[0].parent)
    return paths


def _default_out_dir(ckpt_path: Path) -> Path:
    """<run dir>/export for <run dir>/checkpoints/NAME.ckpt, else NAME-export beside the checkpoint."""
    run_dir = run_dir_of(ckpt_path)
    return run_dir / "export" if run_dir is not None else ckpt_path.with_name(ckpt_path.stem + "-export")
