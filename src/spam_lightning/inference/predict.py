"""`python predict.py` (Hydra, conf/predict.yaml): classify texts with a trained model and write the predictions."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spam_lightning.data.tables import InputError, read_texts, write_predictions
from spam_lightning.files import refuse_replacing_inputs
from spam_lightning.inference.options import check_options
from spam_lightning.inference.predictor import Prediction, load_predictor

log = logging.getLogger(__name__)


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
    check_options(cfg)
    if cfg.get("output"):  # before the model loads
        inputs = {key: cfg.get(key) for key in ("input_file", "ckpt_path", "model_dir", "tokenizer_file")}
        refuse_replacing_inputs(Path(cfg.output), inputs, "output")
    predictor = load_predictor(
        cfg.get("ckpt_path"),
        cfg.get("model_dir"),
        cfg.get("tokenizer_file"),
        cfg.device,
        str(cfg.precision),
        str(cfg.get("backend", "torch")),
    )
    # Refused for more than two classes, saying why, before any text is read or anything written.
    threshold = predictor.decision_threshold(cfg.get("threshold"))
    texts = gather_texts(cfg)
    predictions = predictor.predict(texts, batch_size=cfg.batch_size, threshold=threshold)
    limit = predictor.preprocessing.token_limit
    if cfg.get("output"):
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as stream:
            write_predictions(predictions, stream, cfg.format, limit)
    else:
        write_predictions(predictions, sys.stdout, cfg.format, limit)
        sys.stdout.flush()
    log.info(summary(predictions, predictor.preprocessing.labels, limit))
    return predictions


def summary(predictions: list[Prediction], labels: tuple[str, ...], token_limit: int) -> str:
    """'600 text(s): 66 ham, 455 other, 79 spam, 0 not classified; 3 truncated to 120 tokens (as in training)':
    each class in class-id order."""
    counts = Counter(p.label for p in predictions)
    classes = ", ".join(f"{counts[label]} {label}" for label in labels)
    errors, truncated = counts[None], sum(p.truncated for p in predictions)
    return (
        f"{len(predictions)} text(s): {classes}, {errors} not classified; "
        f"{truncated} truncated to {token_limit} tokens (as in training)"
    )
