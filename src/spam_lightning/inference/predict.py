"""`python predict.py` (Hydra, conf/predict.yaml): classify texts with a trained model and write the predictions."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig, OmegaConf

from spam_lightning.data.tables import DELIMITERS, DataError, decode_utf8, read_table, split_lines
from spam_lightning.files import refuse_replacing_inputs, require_file
from spam_lightning.inference.predictor import Prediction, check_options, load_predictor

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
            raise DataError("nothing to classify: give text=..., input_file=PATH, or pipe texts on stdin")
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


def read_texts(path: str, column: str | None = None) -> list[str]:
    """Texts from a file ('-' for stdin): a .csv/.tsv table's `column` (default 'text'), or one per line.

    stdin is read as a CSV table when `column` is given, else one text per line.
    """
    if path == "-":
        name, data, suffix = "<stdin>", sys.stdin.buffer.read(), ".csv" if column else ""
    else:
        file = require_file(path, "input_file", DataError, "give a file of texts (one per line, or a CSV/TSV)")
        name, data, suffix = str(file), file.read_bytes(), file.suffix.lower()
    text = decode_utf8(data, name)
    if suffix not in DELIMITERS:
        return split_lines(text)
    column = column or "text"
    table = read_table(text, name, DELIMITERS[suffix])
    if column not in table.columns:
        raise DataError(f"{name}: no column {column!r} (columns: {list(table.columns)}); set column=NAME")
    return table[column].tolist()


def write_jsonl(predictions: Sequence[Prediction], stream: TextIO) -> None:
    for p in predictions:
        # allow_nan=False: a non-finite probability is a bug to surface, never invalid JSON (NaN) in the output
        stream.write(json.dumps(p.to_json(), ensure_ascii=False, allow_nan=False) + "\n")


def write_table(predictions: Sequence[Prediction], stream: TextIO, token_limit: int) -> None:
    """Two classes: each text's P(<positive class>); more classes: P(label), the probability of its class."""
    width = shutil.get_terminal_size((120, 24)).columns
    positive_class = next((p.positive_class for p in predictions), None)
    stream.write(f"{'label':<6} {f'P({positive_class})' if positive_class else 'P(label)':>8}  {'note':<17} text\n")
    for p in predictions:
        score = p.positive_probability if positive_class else p.probabilities[p.label] if p.probabilities else None
        prob = f"{score:8.4f}" if score is not None else f"{'-':>8}"
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
