"""Use a trained classifier: load it (a checkpoint or an exported folder) and score texts exactly as
training preprocessed them, from the preprocessing record it carries.

No Lightning in this module: an exported model needs only torch, safetensors and tiktoken. backend=onnxruntime runs
an export's model.onnx instead of the torch network (onnx_model.OnnxNet); only that backend imports onnxruntime.

Rules for inputs:
- an empty or whitespace-only text gets no prediction: label null and error "empty text";
- a text that is not valid UTF-8 (a lone surrogate in a str) gets error "invalid UTF-8";
- a text longer than the training length is truncated as in training and flagged `truncated`;
- two classes: a text is the positive class (`Preprocessing.positive_class`: spam for the SMS data) iff
  P(positive class) > threshold (0.5 by default, as the training metrics count), else the other class;
- more classes: a text is its most probable class; a threshold does not apply and is refused (ConfigError).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tiktoken
import torch

from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError, check_choice, check_int, check_number
from spam_lightning.inference.checkpoint import TrainedModel, load_trained
from spam_lightning.inference.exported import read_export
from spam_lightning.inference.onnx import OnnxNet

# Inference arithmetic: float32, or bfloat16 weights and activations (faster on GPUs; slower on CPUs without
# bf16 units).
PRECISIONS = ("32", "bf16")
# What computes the logits: the torch network (a checkpoint or an export's weights), or an export's model.onnx in
# onnxruntime (export.py format=onnx; CPU, float32).
BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str, device: str | torch.device = "auto", precision: str = "32") -> None:
    """onnxruntime runs the exported float32 graph on the CPU: other devices and precisions are refused."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and str(device) not in ("auto", "cpu"):
        raise ConfigError(f"device={device}: backend=onnxruntime runs on the CPU here; use device=cpu (or auto)")
    if backend == "onnxruntime" and precision != "32":
        raise ConfigError(f"precision={precision}: backend=onnxruntime runs the exported float32 graph; use 32")


@dataclass
class Prediction:
    """One answer, the same fields for every model (predict.py's JSON lines, serve.py's answers)."""

    text: str
    label: str | None  # a class name; None when the text could not be classified
    probabilities: dict[str, float] | None  # P(class) per class name, in class-id order; None with an error
    positive_class: str | None  # two classes: the class the threshold applies to; None for more classes
    positive_probability: float | None  # P(positive_class); None for more classes or with an error
    truncated: bool  # longer than the training length, truncated as in training
    error: str | None = None  # "empty text" | "invalid UTF-8"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # truncated token ids; [] when error
    truncated: bool
    error: str | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class NonFiniteOutputError(ValueError):
    """The network gave NaN/Inf logits for a text (with finite weights: an overflow): no probability to report."""

    def __init__(self, index: int) -> None:
        super().__init__(f"the model's output for text {index} is not finite (NaN/Inf logits): no class probabilities")
        self.index = index  # of the text in the caller's sequence


def two_class_only(key: str, value: float, labels: Sequence[str]) -> str:
    """Why `key` (a threshold, or what chooses one) cannot apply to a model of more than two classes: one message
    for predict, evaluate, serve's threshold= and a request's "threshold"."""
    return (
        f"{key}={value:g} applies to two-class models (P(positive class) > threshold); this model has "
        f"{len(labels)} classes {list(labels)}: the most probable class is predicted"
    )


class Predictor:
    """A trained classifier with its preprocessing: texts in, class probabilities and labels out."""

    def __init__(
        self,
        model: TrainedModel,
        tokenizer: tiktoken.Encoding,
        device: str | torch.device = "auto",
        precision: str = "32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.backend = "onnxruntime" if isinstance(model.net, OnnxNet) else "torch"
        if self.backend == "onnxruntime":
            check_backend(self.backend, device, precision)
            self.device, self.net = torch.device("cpu"), model.net
        else:
            self.device = resolve_device(device)
            # bf16: the weights are converted once (autocast would convert them again in every batch).
            self.net = model.net.to(self.device, torch.bfloat16 if precision == "bf16" else None).eval()
        self.preprocessing = model.preprocessing
        self.training = model.training  # provenance: checkpoint, hyper_parameters, data, frozen weights
        self.tokenizer = tokenizer

    @classmethod
    def from_checkpoint(
        cls, ckpt_path: str | Path, tokenizer_file: str | None = None, device: str = "auto", precision: str = "32"
    ) -> Predictor:
        return cls(load_trained(ckpt_path), get_tokenizer(tokenizer_file), device, precision)

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        tokenizer_file: str | None = None,
        device: str = "auto",
        precision: str = "32",
        backend: str = "torch",
    ) -> Predictor:
        """An exported folder (export.py): its bundled tokenizer file unless `tokenizer_file` is given;
        backend=onnxruntime: its model.onnx (format=onnx) instead of its torch weights."""
        check_backend(backend, device, precision)
        model, bundled = read_export(model_dir, backend)
        tokenizer_file = tokenizer_file or (str(bundled) if bundled is not None else None)
        return cls(model, get_tokenizer(tokenizer_file), device, precision)

    # -- preprocessing ------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Token ids as training made them (Preprocessing.encode), with the texts that cannot be classified."""
        errors = [text_error(t) for t in texts]
        ids, truncated = self.preprocessing.encode(
            self.tokenizer, [t for t, e in zip(texts, errors, strict=True) if e is None]
        )
        valid = iter(zip(ids, truncated, strict=True))
        out = []
        for error in errors:
            out.append(Encoded([], False, error) if error is not None else Encoded(*next(valid)))
        return out

    # -- inference ----------------------------------------------------------------------------

    @torch.inference_mode()
    def probabilities(self, ids: Sequence[list[int]], batch_size: int = 64) -> torch.Tensor:
        """(N, C) class probabilities (float32, CPU) for non-empty token id lists, in the given order.

        With a fixed padded length every row is padded to it, as in training. Otherwise each batch is
        padded to its longest; texts are grouped by length for speed when the result does not depend on
        the batch (Preprocessing.padding_invariant), else kept in the given order. A row that is not finite
        raises NonFiniteOutputError naming its index in `ids`.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        n = len(ids)
        order = list(range(n))
        if self.preprocessing.padding_invariant:
            order.sort(key=lambda i: len(ids[i]))
        probs = torch.empty((n, self.net.num_classes), dtype=torch.float32)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            input_ids, lengths = self.preprocessing.pad([ids[i] for i in rows])
            logits = self.net(input_ids.to(self.device), lengths.to(self.device))
            probs[rows] = logits.float().softmax(dim=-1).cpu()
        bad = (~probs.isfinite().all(dim=1)).nonzero()
        if len(bad):
            raise NonFiniteOutputError(int(bad[0]))
        return probs

    def positive_probabilities(
        self, texts: Sequence[str], batch_size: int = 64
    ) -> tuple[list[float | None], list[Encoded]]:
        """P(positive class) per text (None where the text has an error), and the encodings: binary models only."""
        positive = self.preprocessing.positive_index
        if positive is None:
            raise CheckpointError(
                f"P(positive class) needs a two-class model; this one has {self.net.num_classes} classes "
                f"{list(self.preprocessing.labels)} (use class_probabilities)"
            )
        rows, encoded = self.class_probabilities(texts, batch_size)
        return [None if p is None else p[positive] for p in rows], encoded

    def class_probabilities(
        self, texts: Sequence[str], batch_size: int = 64
    ) -> tuple[list[list[float] | None], list[Encoded]]:
        """P(class) per class for each text (None where the text has an error), and the encodings."""
        encoded = self.encode(texts)
        valid = [i for i, e in enumerate(encoded) if e.error is None]
        try:
            probs = self.probabilities([encoded[i].ids for i in valid], batch_size).tolist()
        except NonFiniteOutputError as err:
            raise NonFiniteOutputError(valid[err.index]) from None
        out: list[list[float] | None] = [None] * len(texts)
        for i, p in zip(valid, probs, strict=True):
            out[i] = p
        return out, encoded

    @property
    def binary(self) -> bool:
        return self.net.num_classes == 2

    def decision_threshold(self, threshold: float | None, key: str = "threshold") -> float | None:
        """The decision threshold to use: two classes, `threshold` (None: 0.5, as the training metrics count); more
        classes, None, and a ConfigError saying why if one was given."""
        if self.binary:
            return 0.5 if threshold is None else threshold
        if threshold is not None:
            raise ConfigError(two_class_only(key, threshold, self.preprocessing.labels))
        return None

    def predict(self, texts: Sequence[str], batch_size: int = 64, threshold: float | None = None) -> list[Prediction]:
        """One Prediction per text, in order (`predictions`)."""
        rows, encoded = self.class_probabilities(texts, batch_size)
        return self.predictions(texts, rows, encoded, threshold)

    def predictions(
        self,
        texts: Sequence[str],
        rows: Sequence[list[float] | None],
        encoded: Sequence[Encoded],
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions from `class_probabilities`' output: two classes, the positive class iff P(positive) >
        threshold (None: 0.5), else the other; more classes, the most probable class (a threshold is refused)."""
        threshold = self.decision_threshold(threshold)
        labels, positive = self.preprocessing.labels, self.preprocessing.positive_index
        positive_class = self.preprocessing.positive_class
        out = []
        for text, p, enc in zip(texts, rows, encoded, strict=True):
            if p is None:
                out.append(Prediction(text, None, None, positive_class, None, enc.truncated, enc.error))
                continue
            probabilities = dict(zip(labels, p, strict=True))
            if positive is None:
                label = labels[max(range(len(p)), key=p.__getitem__)]
                out.append(Prediction(text, label, probabilities, None, None, enc.truncated))
            else:
                assert threshold is not None
                label = labels[positive if p[positive] > threshold else 1 - positive]
                out.append(Prediction(text, label, probabilities, positive_class, p[positive], enc.truncated))
        return out


def text_error(text: str) -> str | None:
    """Why a text gets no prediction ("invalid UTF-8", "empty text"), or None: one rule for predict and serve."""
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
    backend: str = "torch",
) -> Predictor:
    """Exactly one of a Lightning checkpoint or an exported model folder (the only kind backend=onnxruntime runs)."""
    if (ckpt_path is None) == (model_dir is None):
        raise CheckpointError("give exactly one of ckpt_path=PATH.ckpt or model_dir=EXPORTED_FOLDER")
    check_backend(backend, device, precision)
    if ckpt_path is not None and backend == "onnxruntime":
        raise ConfigError(
            "backend=onnxruntime runs an exported model.onnx: give model_dir=FOLDER written by "
            "`python export.py ckpt_path=... format=onnx`, not ckpt_path"
        )
    if ckpt_path is not None:
        return Predictor.from_checkpoint(ckpt_path, tokenizer_file, device, precision)
    return Predictor.from_dir(str(model_dir), tokenizer_file, device, precision, backend)


FORMATS = ("auto", "table", "jsonl")


def check_options(cfg: Mapping[str, Any]) -> None:
    """Check those of the prediction/evaluation options that `cfg` has (predict.yaml, evaluate.yaml)."""
    if cfg.get("threshold") is not None:  # null: the model's default (0.5 for two classes; none for more)
        check_number("threshold", cfg["threshold"], 0.0, 1.0)
    if "batch_size" in cfg:
        check_int("batch_size", cfg["batch_size"], 1)
    if cfg.get("target_precision") not in (None, "auto"):
        check_number("target_precision", cfg["target_precision"], 0.0, 1.0, low_open=True)
    if "show_misclassified" in cfg:
        check_int("show_misclassified", cfg["show_misclassified"], 0)
    if "precision" in cfg:
        check_choice("precision", cfg["precision"], PRECISIONS)
    if "format" in cfg:
        check_choice("format", cfg["format"], FORMATS)
    if "backend" in cfg:
        backend = check_choice("backend", cfg["backend"], BACKENDS)
        check_backend(backend, str(cfg.get("device", "auto")), str(cfg.get("precision", "32")))
