"""Range checks for the options of predict.py and evaluate.py, run before any model loads (and train.py's seeds).

Hydra passes values as YAML/command-line parsing made them: `threshold=nan` arrives as float nan,
`threshold=abc` as a string, `batch_size=true` as a bool. Each check raises a ConfigError naming the key:
`threshold=nan: expected a number in [0, 1]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spam_lightning.errors import ConfigError
from spam_lightning.inference import PRECISIONS

FORMATS = ("auto", "table", "jsonl")


def check_options(cfg: Mapping[str, Any]) -> None:
    """Check those of the prediction/evaluation options that `cfg` has (predict.yaml, evaluate.yaml)."""
    if "threshold" in cfg:
        check_number("threshold", cfg["threshold"], 0.0, 1.0)
    if "batch_size" in cfg:
        check_int("batch_size", cfg["batch_size"], 1)
    if cfg.get("target_precision") is not None:
        check_number("target_precision", cfg["target_precision"], 0.0, 1.0, low_open=True)
    if "show_misclassified" in cfg:
        check_int("show_misclassified", cfg["show_misclassified"], 0)
    if "precision" in cfg:
        check_choice("precision", cfg["precision"], PRECISIONS)
    if "format" in cfg:
        check_choice("format", cfg["format"], FORMATS)


def check_number(key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """A finite int or float in [low, high] ((low, high] with low_open), else a ConfigError naming the key."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (low < value if low_open else low <= value) or value > high:
        raise ConfigError(f"{key}={_show(value)}: expected a number in {'(' if low_open else '['}{low:g}, {high:g}]")
    return float(value)


def check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An int in [minimum, maximum] (not a bool, not a float), else a ConfigError naming the key."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    if not integer or value < minimum or (maximum is not None and value > maximum):
        expected = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key}={_show(value)}: expected an integer {expected}")
    return value


MAX_SEED = 2**32 - 1  # numpy's (and so pandas' sampling) seed range; Lightning would pick another seed silently


def check_seeds(cfg: Mapping[str, Any]) -> None:
    """train.py's `seed` and `data.seed`."""
    check_int("seed", cfg.get("seed"), 0, MAX_SEED)
    check_int("data.seed", (cfg.get("data") or {}).get("seed", 0), 0, MAX_SEED)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of `choices`, compared as text (`precision=32` arrives as the int 32), else a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) not in choices:
        raise ConfigError(f"{key}={_show(value)}: expected one of {', '.join(choices)}")
    return str(value)


def _show(value: Any) -> str:
    """A value as it would be written on the command line: nan, 2.5, true, null, 'abc'."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)
