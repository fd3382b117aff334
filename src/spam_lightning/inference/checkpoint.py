"""What a checkpoint holds, and the one way to read one (training's resume, prediction, export, evaluation).

Lightning writes the checkpoint; `SpamClassifier` adds our record to it under `RECORD_KEY`:

    format           RECORD_FORMAT
    net              SpamNet.args(): architecture, number of classes, pooling
    preprocessing    Preprocessing.to_dict(): tokenizer, lengths, padding, labels
    data             where the training data came from (source, folder, seed, split hashes)
    frozen_weights   None: state_dict holds every weight. Else the provenance of the pretrained weights
                     (preset and pinned Hub revision, or file path; sha256), or of a random init
                     (pretrained None, init_seed, the initial weights' sha256): state_dict holds only what
                     training changed, and the frozen tensors are read again from those weights (or made
                     again from the seed), which must have the recorded sha256. The new head's tensors are
                     always in state_dict.
    lora             None, or LoRAConfig.to_dict() (rank, alpha, dropout, targets) of a model.finetune=lora run:
                     state_dict's keys include the adapters (…lora_A, …lora_B); `load_trained` merges them.
    record_sha256    `record_sha256(record, state_dict)`: the sha256 of the record but `UNBOUND` and of each tensor of
                     state_dict, so an edited record (max_length 128 -> 64, another pool) or tensor is refused
                     rather than silently predicting otherwise.

No Lightning here: prediction and export load checkpoints without it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spam_lightning.data.preprocess import Preprocessing
from spam_lightning.errors import CheckpointError, UnsafeCheckpointError
from spam_lightning.files import require_file
from spam_lightning.model.gpt import make_config
from spam_lightning.model.lora import LoRAConfig, apply_lora, merge_lora
from spam_lightning.model.net import SpamNet
from spam_lightning.model.weights import all_finite, load_recorded, tensors_sha256

RECORD_KEY = "spam_lightning"
RECORD_FORMAT = 3  # 1: before the record existed (keys gpt.*, settings read from config.yaml): refused
# 2: the record without record_sha256, still read (nothing to check it against: its values are checked as before)
READ_FORMATS = (2, RECORD_FORMAT)
# What record_sha256 leaves out: itself, and `data`, where the training data came from. That changes no prediction;
# evaluate.py checks the split files it reads against data.splits_sha256 (a CSV's files against their recorded sha256),
# so an edited data record can refuse the real splits but cannot pass other texts off as them. Exports leave it out too
# (their `training` provenance), and a moved data folder needs no edit (evaluate.py data_dir=).
UNBOUND = ("record_sha256", "data")
NET_PREFIX = "net."  # SpamClassifier holds the SpamNet as `net`


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as a dict, read with `weights_only=True` (memory-mapped).

    Our checkpoints hold only tensors, numbers, strings and plain containers, which torch's weights-only
    unpickler allows by default: nothing else is allow-listed. Any other pickled object (a class, a
    function such as os.system) is refused before it is built.
    """
    path = require_file(path, "checkpoint", CheckpointError, f"use model_dir={path} for an exported model")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False; keep only the line naming what was refused.
        match = re.search(r"^.*unsupported (global|class).*$", str(err), re.IGNORECASE | re.MULTILINE)
        if match is None:  # not a refused object: bytes that are no pickle at all
            raise CheckpointError(f"checkpoint {str(path)!r} is not a checkpoint (not a torch file)") from err
        detail = match.group(0).strip().rstrip(".")
        raise UnsafeCheckpointError(
            f"refusing checkpoint {str(path)!r}: it holds pickled objects other than tensors and plain "
            f"containers ({detail}); it was not loaded and none of its code ran"
        ) from err
    except Exception as err:
        cause = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint?): {cause}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def read_record(ckpt: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our record in a checkpoint read by `read_checkpoint`; older or foreign checkpoints are refused."""
    record = ckpt.get(RECORD_KEY)
    if not isinstance(record, Mapping):
        old = any(key.startswith("gpt.") for key in ckpt.get("state_dict", {}))
        raise CheckpointError(
            f"{source} was written by an older spam_lightning (before checkpoints recorded their preprocessing)"
            " and cannot be used by this version: train again, or export it with the version that wrote it"
            if old
            else f"{source} is not a spam_lightning checkpoint (no {RECORD_KEY!r} record)"
        )
    if record.get("format") not in READ_FORMATS:
        expected = " or ".join(map(str, READ_FORMATS))
        raise CheckpointError(f"{source}: checkpoint format {record.get('format')!r}, expected {expected}")
    if record["format"] != 2:
        if not isinstance(record.get("record_sha256"), str):
            raise CheckpointError(f"{source}: record_sha256 is missing or not a string (every checkpoint writes it)")
        if record_sha256(record, ckpt["state_dict"]) != record["record_sha256"]:
            raise CheckpointError(
                f"{source}: the record or the weights do not match its record_sha256: the checkpoint was edited after "
                "training (refused: it could change the predictions)"
            )
    return dict(record)


def record_sha256(record: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of the record's canonical JSON (all but `UNBOUND`: the format, net, preprocessing, frozen weights'
    provenance, LoRA settings) and of each tensor of the state_dict: its name, dtype, shape and bytes."""
    bound = {key: value for key, value in record.items() if key not in UNBOUND}
    tensors = tensors_sha256(sorted(state_dict.items()))
    return hashlib.sha256(json.dumps([bound, tensors], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class TrainedModel:
    """A trained classifier as training left it: the network, its preprocessing, and where it came from."""

    net: SpamNet
    preprocessing: Preprocessing
    training: dict[str, Any]  # checkpoint, hyper_parameters, data, frozen_weights


def load_trained(path: str | Path) -> TrainedModel:
    """The complete trained network of a checkpoint, on the CPU in eval mode (frozen weights read again and
    checked against their recorded sha256 when the checkpoint holds only the trained ones; LoRA adapters merged
    into the weights, so the net is a plain SpamNet)."""
    source = str(path)
    ckpt = read_checkpoint(path)
    record = read_record(ckpt, source)
    try:
        net = SpamNet.from_args(record["net"], device="meta")  # shapes only: no time on random init
        preprocessing = Preprocessing.from_dict(record["preprocessing"], source)
        lora = LoRAConfig.from_dict(record["lora"]) if record.get("lora") is not None else None
        if lora is not None:
            apply_lora(net, lora)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: unusable record ({err})") from err
    state = {k.removeprefix(NET_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    frozen = record.get("frozen_weights")
    if frozen is not None:
        pretrained = load_recorded(make_config(record["net"]["arch"]), frozen, source)
        state = {**{f"gpt.{k}": v for k, v in pretrained.items()}, **state}  # the trained head replaces GPT-2's
    load_net_state(net, state, source)
    check_finite(net, f"checkpoint {source!r}")
    merge_lora(net)
    training = {
        "checkpoint": str(Path(path).absolute()),
        "hyper_parameters": dict(ckpt.get("hyper_parameters", {})),
        "data": dict(record.get("data") or {}),
        "frozen_weights": frozen,
        "lora": record.get("lora"),
    }
    return TrainedModel(net.eval(), preprocessing, training)


def load_net_state(net: SpamNet, state: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: the weights do not fit the recorded network: {err}") from err


def check_finite(weights: torch.nn.Module | Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run, a corrupt file): they would predict garbage silently.
    `source` starts the message: "checkpoint 'x.ckpt'"."""
    tensors = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise CheckpointError(f"{source}: parameter {name} holds NaN/Inf values")


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run directory of a checkpoint that train.py wrote (<run dir>/checkpoints/NAME.ckpt), else None.
    Only for where outputs go by default (export/, evaluation/): nothing is read from the run directory."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None
