"""Use a trained classifier: load it safely and classify texts exactly as training preprocessed them.

A model comes from a Lightning `.ckpt` (read with `torch.load(weights_only=True)`: tensors and plain
containers only, never arbitrary pickled objects) or from a folder written by `export`
(`model.safetensors` + `config.json`). Either way the preprocessing is taken from what training
recorded, never re-specified by hand: the tokenizer (GPT-2 BPE, sha256-pinned), the truncation length,
the padding (a fixed padded length, or each batch to its longest) and the pooling.

No Lightning in this module: an exported model needs only torch, safetensors and tiktoken.

Rules for inputs:
- an empty or whitespace-only text gets no prediction: label null and error "empty text";
- a text that is not valid UTF-8 (a lone surrogate in a str) gets error "invalid UTF-8"; an input
  *file* with invalid UTF-8 is refused with an InputError naming the file and line;
- a text longer than the training length is truncated as in training and flagged `truncated`;
- a text is spam iff P(spam) > threshold (0.5 by default, as the training metrics count).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import tiktoken
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch import nn

from spam_lightning.errors import UserError
from spam_lightning.gpt import POOLS, GPTConfig, GPTModel, make_config
from spam_lightning.tokenizer import GPT2_TIKTOKEN_SHA256, PAD_TOKEN_ID, file_sha256, get_tokenizer

log = logging.getLogger(__name__)

LABELS = ("ham", "spam")  # class 0, class 1
# Inference arithmetic: float32, or bfloat16 weights and activations (faster on GPUs; slower on CPUs without
# bf16 units).
PRECISIONS = ("32", "bf16")
EXPORT_FORMAT = "spam_lightning.classifier/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "gpt2.tiktoken"
DATAMODULE_KEY = "SmsSpamDataModule"  # where Lightning keeps the datamodule's state_dict() in a checkpoint
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


class CheckpointError(UserError, ValueError):
    """A checkpoint or exported model that cannot be used (missing, corrupt, foreign, incomplete)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled objects other than tensors and plain containers: refused, never run."""


class InputError(UserError, ValueError):
    """Unusable input texts: the message names the file and line."""


# --------------------------------------------------------------------------------------------------
# What a trained model is: architecture, head, and the preprocessing it was trained with
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    arch: dict[str, Any]  # GPTConfig fields
    pool: str  # last | last_token | first | mean (SpamClassifier's pooling)
    num_classes: int
    padding: str | int  # the training data.padding: longest_train | batch | an int
    pad_length: int | None  # every text padded (and truncated) to this many tokens; None: each batch to its longest
    max_length: int  # texts are truncated to this many tokens (data.max_length, capped at the context length)
    tokenizer_file: str | None = None  # a GPT-2 .tiktoken ranks file; None: tiktoken's own gpt2 encoding
    training: dict[str, Any] = field(default_factory=dict)  # provenance: checkpoint, hyper_parameters, data

    @property
    def token_limit(self) -> int:
        """Texts longer than this many tokens are truncated (as the data module does)."""
        return min(self.max_length, self.pad_length) if self.pad_length is not None else self.max_length

    @property
    def padding_invariant(self) -> bool:
        """Whether a text's logits are independent of the other texts in its batch."""
        return self.pad_length is not None or self.pool != "last"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "architecture": self.arch,
            "head": {"num_classes": self.num_classes, "labels": list(LABELS), "pool": self.pool},
            "preprocessing": {
                "padding": self.padding,
                "pad_length": self.pad_length,
                "max_length": self.max_length,
                "pad_token_id": PAD_TOKEN_ID,
                "padding_side": "right",
            },
            "tokenizer": {"name": "gpt2", "file": TOKENIZER_NAME, "sha256": GPT2_TIKTOKEN_SHA256},
            "training": self.training,
        }

    @classmethod
    def from_json(cls, config: Mapping[str, Any], model_dir: Path) -> ModelSpec:
        try:
            if config["format"] != EXPORT_FORMAT:
                raise CheckpointError(f"{model_dir}: format {config['format']!r}, expected {EXPORT_FORMAT!r}")
            if config["tokenizer"]["sha256"] != GPT2_TIKTOKEN_SHA256:
                raise CheckpointError(f"{model_dir}: trained with another tokenizer ({config['tokenizer']})")
            pre, head = config["preprocessing"], config["head"]
            bundled = model_dir / config["tokenizer"]["file"]
            return cls(
                arch=dict(config["architecture"]),
                pool=head["pool"],
                num_classes=int(head["num_classes"]),
                padding=pre["padding"],
                pad_length=pre["pad_length"],
                max_length=int(pre["max_length"]),
                tokenizer_file=str(bundled) if bundled.is_file() else None,
                training=dict(config.get("training", {})),
            )
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{model_dir / CONFIG_NAME}: incomplete model config (missing {err})") from err


# --------------------------------------------------------------------------------------------------
# The network: SpamClassifier's forward pass in plain PyTorch (same parameter names, gpt.*)
# --------------------------------------------------------------------------------------------------


class SpamNet(nn.Module):
    """GPT-2 body + pooling + linear head, as `SpamClassifier.forward` computes it (kept in step by a test)."""

    def __init__(self, cfg: GPTConfig, num_classes: int, pool: str) -> None:
        super().__init__()
        if pool not in POOLS:
            raise CheckpointError(f"unknown pooling {pool!r}, expected one of {list(POOLS)}")
        self.gpt = GPTModel(cfg)
        self.gpt.out_head = nn.Linear(cfg.emb_dim, num_classes)
        self.pool = pool

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.gpt.out_head(self.gpt.pooled(self.gpt.embed(input_ids), lengths, self.pool))


def build_net(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], source: str) -> SpamNet:
    """SpamNet holding `state_dict` (keys gpt.*); built on the meta device, so no time goes into random init."""
    with torch.device("meta"):
        net = SpamNet(make_config(spec.arch), spec.num_classes, spec.pool)
    # Only the model's weights (not metric or cache state); torch.compile wrappers add "._orig_mod" to names.
    weights = {k.replace("._orig_mod", ""): v for k, v in state_dict.items() if k.startswith("gpt.")}
    try:
        net.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: the weights do not fit the recorded architecture: {err}") from err
    return net.eval()


# --------------------------------------------------------------------------------------------------
# Loading: Lightning checkpoints (weights only) and exported folders
# --------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, read with `weights_only=True`.

    Lightning 2.x checkpoints of SpamClassifier hold only tensors, numbers, strings and plain
    containers, which torch's weights-only unpickler allows by default: nothing else is allow-listed.
    Any other pickled object (a class, a function such as os.system) is refused before it is built.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False; keep only the line naming what was refused.
        match = re.search(r"^.*unsupported.*$", str(err), re.IGNORECASE | re.MULTILINE)
        detail = match.group(0).strip().rstrip(".") if match else "not a weights-only pickle"
        raise UnsafeCheckpointError(
            f"refusing checkpoint {str(path)!r}: it holds pickled objects other than tensors and plain "
            f"containers ({detail}); it was not loaded and none of its code ran"
        ) from err
    except Exception as err:
        cause = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint?): {cause}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not a SpamClassifier Lightning checkpoint (no state_dict/hyper_parameters)")
    return ckpt


def training_config(ckpt_path: Path) -> dict[str, Any] | None:
    """The resolved config.yaml that train.py wrote in the run directory (the folder above checkpoints/)."""
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return None
    return yaml.safe_load(config_file.read_text(encoding="utf-8"))


def spec_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> ModelSpec:
    hp = dict(ckpt["hyper_parameters"])
    try:
        arch = make_config(hp["arch"], dropout=hp.get("dropout")).to_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unusable hyper_parameters.arch ({err})") from err
    config = training_config(path)
    data: dict[str, Any] = dict((config or {}).get("data") or {})
    if config is None:
        log.warning("no config.yaml in the run directory of %s: assuming data.max_length=null", path)
    state = ckpt.get(DATAMODULE_KEY)
    if isinstance(state, Mapping) and "pad_length" in state:
        pad_length = state["pad_length"]
    elif isinstance(data.get("padding"), int) or data.get("padding") == "batch":
        pad_length = data["padding"] if data["padding"] != "batch" else None
    else:
        raise CheckpointError(
            f"{path}: the padded length is unknown (no {DATAMODULE_KEY} state in the checkpoint and no "
            "data.padding int or 'batch' in the run's config.yaml)"
        )
    context = arch["context_length"]
    max_length = min(data.get("max_length") or context, context)
    tokenizer_file = data.get("tokenizer_file")
    if tokenizer_file is not None and not Path(tokenizer_file).expanduser().is_file():
        log.warning("the training tokenizer_file %s is not here: using the cached GPT-2 vocabulary", tokenizer_file)
        tokenizer_file = None
    data_state = {k: v for k, v in (state or {}).items() if k in ("seed", "splits_sha256")}
    data_keys = ("source", "data_dir", "seed", "verify_checksum", "tokenizer_file")
    return ModelSpec(
        arch=arch,
        pool=hp.get("pool", "last"),
        num_classes=int(hp.get("num_classes", 2)),
        padding=data.get("padding", "batch" if pad_length is None else pad_length),
        pad_length=pad_length,
        max_length=max_length,
        tokenizer_file=tokenizer_file,
        training={
            "checkpoint": str(path),
            "hyper_parameters": hp,
            "data": {**{k: data[k] for k in data_keys if k in data}, **data_state},
        },
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Prediction:
    text: str
    label: str | None  # "ham" | "spam"; None when the text could not be classified
    spam_probability: float | None
    truncated: bool  # longer than the training length, truncated as in training
    error: str | None = None  # "empty text" | "invalid UTF-8"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # truncated token ids; [] when error
    truncated: bool
    error: str | None = None


class Predictor:
    """A trained classifier with its preprocessing: texts in, P(spam) out."""

    def __init__(
        self,
        net: SpamNet,
        spec: ModelSpec,
        tokenizer: tiktoken.Encoding,
        device: torch.device,
        precision: str = "32",
    ) -> None:
        if spec.num_classes != 2:
            raise CheckpointError(f"a spam classifier has 2 classes (ham, spam); this model has {spec.num_classes}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        # bf16: the weights are converted once (autocast would convert them again in every batch).
        self.net = net.to(device, torch.bfloat16 if precision == "bf16" else None).eval()
        self.spec = spec
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        tokenizer_file: str | None = None,
        device: str | torch.device = "auto",
        precision: str = "32",
    ) -> Predictor:
        path = Path(ckpt_path)
        ckpt = read_checkpoint(path)
        spec = spec_from_checkpoint(ckpt, path)
        if tokenizer_file is not None:
            spec = _with_tokenizer(spec, tokenizer_file)
        net = build_net(spec, ckpt["state_dict"], str(path))
        return cls(net, spec, get_tokenizer(spec.tokenizer_file), resolve_device(device), precision)

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        tokenizer_file: str | None = None,
        device: str | torch.device = "auto",
        precision: str = "32",
    ) -> Predictor:
        """An exported model folder: config.json + model.safetensors (+ the tokenizer file), no pickle."""
        model_dir = Path(model_dir)
        config_file, weights_file = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise CheckpointError(f"{model_dir} is not an exported model: {needed.name} is missing")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{config_file}: not valid JSON ({err})") from err
        spec = ModelSpec.from_json(config, model_dir)
        if tokenizer_file is not None:
            spec = _with_tokenizer(spec, tokenizer_file)
        expected = config.get("weights_sha256")
        if expected is not None and file_sha256(weights_file) != expected:
            raise CheckpointError(f"{weights_file}: sha256 differs from config.json's weights_sha256 (corrupt?)")
        try:
            state = load_file(weights_file)
        except Exception as err:
            raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from err
        net = build_net(spec, state, str(weights_file))
        return cls(net, spec, get_tokenizer(spec.tokenizer_file), resolve_device(device), precision)

    # -- preprocessing ------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Token ids as the data module makes them (encode_ordinary, truncated to the training length)."""
        limit = self.spec.token_limit
        errors: list[str | None] = [_text_error(t) for t in texts]
        valid = [t for t, e in zip(texts, errors, strict=True) if e is None]
        ids = iter(self.tokenizer.encode_ordinary_batch(valid))
        out = []
        for error in errors:
            if error is not None:
                out.append(Encoded([], False, error))
            else:
                tokens = next(ids)
                out.append(Encoded(tokens[:limit], len(tokens) > limit))
        return out

    # -- inference ----------------------------------------------------------------------------

    @torch.inference_mode()
    def probabilities(self, ids: Sequence[list[int]], batch_size: int = 64) -> torch.Tensor:
        """(N, 2) class probabilities (float32, CPU) for non-empty token id lists, in the given order.

        With a fixed padded length every row is padded to it, as in training. Otherwise each batch is
        padded to its longest; texts are grouped by length for speed when the pooling makes the
        result independent of the batch (all but pool=last), else kept in the given order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(ids)
        order = list(range(n))
        if self.spec.padding_invariant:
            order.sort(key=lambda i: len(ids[i]))
        probs = torch.empty((n, self.spec.num_classes), dtype=torch.float32)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            lengths = [len(ids[i]) for i in rows]
            width = self.spec.pad_length if self.spec.pad_length is not None else max(lengths)
            input_ids = torch.full((len(rows), width), PAD_TOKEN_ID, dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, : lengths[r]] = torch.tensor(ids[i], dtype=torch.long)
            logits = self.net(input_ids.to(self.device), torch.tensor(lengths, device=self.device))
            probs[rows] = logits.float().softmax(dim=-1).cpu()
        return probs

    def spam_probabilities(
        self, texts: Sequence[str], batch_size: int = 64
    ) -> tuple[list[float | None], list[Encoded]]:
        """P(spam) per text (None where the text has an error), and the encodings."""
        encoded = self.encode(texts)
        valid = [i for i, e in enumerate(encoded) if e.error is None]
        probs = self.probabilities([encoded[i].ids for i in valid], batch_size)[:, 1].tolist()
        scores: list[float | None] = [None] * len(texts)
        for i, p in zip(valid, probs, strict=True):
            scores[i] = p
        return scores, encoded

    def predict(self, texts: Sequence[str], batch_size: int = 64, threshold: float = 0.5) -> list[Prediction]:
        """One Prediction per text, in order: spam iff P(spam) > threshold."""
        scores, encoded = self.spam_probabilities(texts, batch_size)
        out = []
        for text, p, enc in zip(texts, scores, encoded, strict=True):
            label = None if p is None else LABELS[int(p > threshold)]
            out.append(Prediction(text, label, p, enc.truncated, enc.error))
        return out


def _with_tokenizer(spec: ModelSpec, tokenizer_file: str) -> ModelSpec:
    return ModelSpec(**{**spec.__dict__, "tokenizer_file": tokenizer_file})


def _text_error(text: str) -> str | None:
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid UTF-8"
    return None if text.strip() else "empty text"


def load_predictor(
    ckpt_path: str | None = None,
    model_dir: str | None = None,
    tokenizer_file: str | None = None,
    device: str = "auto",
    precision: str = "32",
) -> Predictor:
    """Exactly one of a Lightning checkpoint or an exported model folder."""
    if (ckpt_path is None) == (model_dir is None):
        raise CheckpointError("give exactly one of ckpt_path=PATH.ckpt or model_dir=EXPORTED_FOLDER")
    if ckpt_path is not None:
        return Predictor.from_checkpoint(ckpt_path, tokenizer_file, device, precision)
    return Predictor.from_dir(str(model_dir), tokenizer_file, device, precision)


# --------------------------------------------------------------------------------------------------
# Reading texts
# --------------------------------------------------------------------------------------------------


def decode_utf8(data: bytes, name: str) -> str:
    """Strict UTF-8 (a BOM is dropped); the error names the file, line and column."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(
            f"{name}, line {line}: invalid UTF-8 (byte 0x{data[err.start]:02x} at column {err.start - line_start + 1})"
        ) from err


def split_lines(text: str) -> list[str]:
    """One text per line (\\n or \\r\\n); a final newline does not make an extra empty text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_table(text: str, name: str, sep: str) -> pd.DataFrame:
    try:
        # dtype=str and keep_default_na=False: a message "NA" or "null" stays text (as the data module reads).
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{name}: not a valid {'TSV' if sep == chr(9) else 'CSV'} table ({err})") from err


def read_texts(path: str, column: str | None = None) -> list[str]:
    """Texts from a file ('-' for stdin): a .csv/.tsv table's `column` (default 'text'), or one per line.

    stdin is read as a CSV table when `column` is given, else one text per line.
    """
    if path == "-":
        name, data, suffix = "<stdin>", sys.stdin.buffer.read(), ".csv" if column else ""
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise InputError(f"input_file {path!r} does not exist")
        name, data, suffix = str(file), file.read_bytes(), file.suffix.lower()
    text = decode_utf8(data, name)
    if suffix not in TABLE_SUFFIXES:
        return split_lines(text)
    column = column or "text"
    table = read_table(text, name, TABLE_SUFFIXES[suffix])
    if column not in table.columns:
        raise InputError(f"{name}: no column {column!r} (columns: {list(table.columns)}); set column=NAME")
    return table[column].tolist()


# --------------------------------------------------------------------------------------------------
# Writing predictions
# --------------------------------------------------------------------------------------------------


def write_jsonl(predictions: Sequence[Prediction], stream: TextIO) -> None:
    for p in predictions:
        stream.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


def write_table(predictions: Sequence[Prediction], stream: TextIO, token_limit: int) -> None:
    width = shutil.get_terminal_size((120, 24)).columns
    stream.write(f"{'label':<6} {'P(spam)':>8}  {'note':<17} text\n")
    for p in predictions:
        prob = f"{p.spam_probability:8.4f}" if p.spam_probability is not None else f"{'-':>8}"
        note = f"error: {p.error}" if p.error else (f"truncated to {token_limit}" if p.truncated else "")
        text = p.text.encode("utf-8", "replace").decode("utf-8").replace("\n", " ").replace("\t", " ")
        room = max(20, width - 35)
        text = text if len(text) <= room else text[: room - 1] + "…"
        stream.write(f"{p.label or '-':<6} {prob}  {note:<17} {text}\n")


def write_predictions(predictions: Sequence[Prediction], stream: TextIO, fmt: str, token_limit: int) -> None:
    """fmt: table | jsonl | auto (a table on a terminal, JSON lines otherwise)."""
    if fmt not in ("auto", "table", "jsonl"):
        raise ValueError(f"format must be auto, table or jsonl, got {fmt!r}")
    if fmt == "table" or (fmt == "auto" and stream.isatty()):
        write_table(predictions, stream, token_limit)
    else:
        write_jsonl(predictions, stream)


# --------------------------------------------------------------------------------------------------
# `python predict.py` (Hydra, conf/predict.yaml)
# --------------------------------------------------------------------------------------------------


def gather_texts(cfg: DictConfig) -> list[str]:
    texts: list[str] = []
    if cfg.get("text") is not None:
        value = OmegaConf.to_object(cfg.text) if OmegaConf.is_config(cfg.text) else cfg.text
        texts += [str(t) for t in value] if isinstance(value, list) else [str(value)]
    if cfg.get("input_file"):
        texts += read_texts(str(cfg.input_file), cfg.get("column"))
    if cfg.get("text") is None and not cfg.get("input_file"):
        if sys.stdin.isatty():
            raise InputError("nothing to classify: give text=..., input_file=PATH, or pipe texts on stdin")
        texts = read_texts("-", cfg.get("column"))
    return texts


def run(cfg: DictConfig) -> list[Prediction]:
    """Classify the configured texts and write them (stdout or cfg.output); returns the predictions."""
    predictor = load_predictor(
        cfg.get("ckpt_path"), cfg.get("model_dir"), cfg.get("tokenizer_file"), cfg.device, str(cfg.precision)
    )
    texts = gather_texts(cfg)
    predictions = predictor.predict(texts, batch_size=cfg.batch_size, threshold=cfg.threshold)
    limit = predictor.spec.token_limit
    if cfg.get("output"):
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as stream:
            write_predictions(predictions, stream, cfg.format, limit)
    else:
        write_predictions(predictions, sys.stdout, cfg.format, limit)
        sys.stdout.flush()
    spam = sum(p.label == "spam" for p in predictions)
    errors = sum(p.error is not None for p in predictions)
    truncated = sum(p.truncated for p in predictions)
    log.info(
        "%d text(s): %d spam, %d ham, %d not classified; %d truncated to %d tokens (as in training)",
        len(predictions), spam, len(predictions) - spam - errors, errors, truncated, limit,
    )  # fmt: skip
    return predictions
