"""Texts in, predictions out: input files (one text per line, CSV/TSV columns, stdin) and output writers
(a table for people, JSON lines for programs). Invalid UTF-8 in a file is refused naming file, line, column."""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

import pandas as pd

from spam_lightning.errors import UserError
from spam_lightning.files import require_file
from spam_lightning.inference import Prediction

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


class InputError(UserError, ValueError):
    """Unusable input texts: the message names the file and line."""


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
        file = require_file(path, "input_file", InputError, "give a file of texts (one per line, or a CSV/TSV)")
        name, data, suffix = str(file), file.read_bytes(), file.suffix.lower()
    text = decode_utf8(data, name)
    if suffix not in TABLE_SUFFIXES:
        return split_lines(text)
    column = column or "text"
    table = read_table(text, name, TABLE_SUFFIXES[suffix])
    if column not in table.columns:
        raise InputError(f"{name}: no column {column!r} (columns: {list(table.columns)}); set column=NAME")
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
