"""Export a trained classifier as a self-contained folder that needs no Lightning and no pickle:

    model.safetensors   the weights (keys gpt.*, as in the Lightning checkpoint's state_dict)
    config.json         architecture, head (classes, pooling), preprocessing (padding, padded and
                        maximum length, pad token), tokenizer identity and sha256, weights sha256,
                        and where it came from (checkpoint, hyper-parameters, data seed and split hashes)
    gpt2.tiktoken       the GPT-2 BPE ranks file (sha256-pinned), so predicting needs no download

`Predictor.from_dir(folder)` (or `python predict.py model_dir=FOLDER`) loads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig
from safetensors.torch import save_file

from spam_lightning.predict import (
    CONFIG_NAME,
    EXPORT_FORMAT,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    Predictor,
    load_predictor,
)
from spam_lightning.tokenizer import GPT2_TIKTOKEN_SHA256, file_sha256

log = logging.getLogger(__name__)


def export_model(predictor: Predictor, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write model.safetensors, gpt2.tiktoken and config.json (last) into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an exported model; pass overwrite=true to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file, tokenizer_file, config_file = out_dir / WEIGHTS_NAME, out_dir / TOKENIZER_NAME, out_dir / CONFIG_NAME
    config_file.unlink(missing_ok=True)  # a folder without config.json is never taken for a complete export

    state = {k: v.detach().cpu().contiguous() for k, v in predictor.net.state_dict().items()}
    save_file(state, weights_file, metadata={"format": EXPORT_FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_file, 0o666 & ~umask)  # safetensors writes 0600; give the usual permissions
    _write_tokenizer(predictor, tokenizer_file)
    config = {**predictor.spec.to_json(), "weights_sha256": file_sha256(weights_file)}
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [weights_file, tokenizer_file, config_file]


def _write_tokenizer(predictor: Predictor, dest: Path) -> None:
    source = predictor.spec.tokenizer_file
    if source is not None and Path(source).resolve() != dest.resolve():
        shutil.copyfile(source, dest)  # get_tokenizer() checked its sha256 when the predictor was loaded
    elif source is None:
        # tiktoken's own gpt2 encoding: write its ranks in the .tiktoken format (the pinned file's exact bytes)
        ranks = sorted(predictor.tokenizer._mergeable_ranks.items(), key=lambda item: item[1])
        dest.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks))
    actual = hashlib.sha256(dest.read_bytes()).hexdigest()
    if actual != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"{dest}: sha256 {actual} is not GPT-2's {GPT2_TIKTOKEN_SHA256}")


def run(cfg: DictConfig) -> list[Path]:
    """`python export.py ckpt_path=... out_dir=...` (conf/export.yaml)."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError("give the checkpoint to export: python export.py ckpt_path=PATH.ckpt")
    predictor = load_predictor(cfg.ckpt_path, None, cfg.get("tokenizer_file"), device="cpu")
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else _default_out_dir(Path(cfg.ckpt_path))
    paths = export_model(predictor, out_dir, overwrite=cfg.overwrite)
    log.info("exported %s to %s (%s)", cfg.ckpt_path, out_dir, ", ".join(p.name for p in paths))
    print(out_dir)
    return paths


def _default_out_dir(ckpt_path: Path) -> Path:
    """<run dir>/export for <run dir>/checkpoints/NAME.ckpt, else NAME-export beside the checkpoint."""
    if ckpt_path.parent.name == "checkpoints":
        return ckpt_path.parent.parent / "export"
    return ckpt_path.with_name(ckpt_path.stem + "-export")
