"""Range checks for the options of predict.py and evaluate.py, run before any model loads; train.py's seeds and
the model group's values.

Hydra passes values as YAML/command-line parsing made them: `threshold=nan` arrives as float nan,
`threshold=abc` as a string, `batch_size=true` as a bool. Each check raises a ConfigError naming the key:
`threshold=nan: expected a number in [0, 1]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spam_lightning.errors import ConfigError
from spam_lightning.model.gpt import POOLS
from spam_lightning.model.lora import LoRAConfig
from spam_lightning.training.feature_cache import check_cache_dir

FORMATS = ("auto", "table", "jsonl")
NAMED_TRAINABLE = ("head", "last_block", "last_two_blocks", "all")  # model.trainable_layers, besides a block count
SCHEDULERS = ("none", "cosine")
FINETUNE = ("layers", "lora")  # model.finetune


def check_options(cfg: Mapping[str, Any]) -> None:
    """Check those of the prediction/evaluation options that `cfg` has (predict.yaml, evaluate.yaml)."""
    # Here, not at the top: training imports this module too, and needs none of inference's (export, ONNX).
    from spam_lightning.inference.predictor import BACKENDS, PRECISIONS, check_backend

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


def check_model_options(args: Mapping[str, Any]) -> None:
    """The `model` config group's values (SpamClassifier's arguments), before anything is built."""
    pretrained, dropout, num_classes, trainable_layers = (
        args[k] for k in ("pretrained", "dropout", "num_classes", "trainable_layers")
    )
    pool, lr, weight_decay, scheduler, warmup_steps = (
        args[k] for k in ("pool", "lr", "weight_decay", "scheduler", "warmup_steps")
    )

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if pretrained is not None and not isinstance(pretrained, str):
        raise ConfigError(f"model.pretrained must be None, a preset name or a path, got {pretrained!r}")
    init_seed = args.get("init_seed")
    if init_seed is not None and not is_int(init_seed):
        raise ConfigError(f"model.init_seed must be null or an integer, got {init_seed!r}")
    if dropout is not None and not (is_number(dropout) and 0.0 <= dropout < 1.0):
        raise ConfigError(f"model.dropout must be None or in [0, 1), got {dropout!r}")
    if not (is_int(num_classes) and num_classes >= 2):
        raise ConfigError(f"model.num_classes must be an integer >= 2, got {num_classes!r}")
    if is_int(trainable_layers):
        if trainable_layers < 0:
            raise ConfigError(f"model.trainable_layers as a block count must be >= 0, got {trainable_layers}")
    elif trainable_layers not in NAMED_TRAINABLE:
        raise ConfigError(
            f"model.trainable_layers must be one of {list(NAMED_TRAINABLE)} or a number of last blocks "
            f"(0..n_layers), got {trainable_layers!r}"
        )
    if pool not in POOLS:
        raise ConfigError(f"model.pool must be one of {list(POOLS)}, got {pool!r}")
    if not (is_number(lr) and lr > 0):
        raise ConfigError(f"model.lr must be a number > 0, got {lr!r}")
    if not (is_number(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"model.weight_decay must be a number >= 0, got {weight_decay!r}")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"model.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    if not (is_int(warmup_steps) and warmup_steps >= 0):
        raise ConfigError(f"model.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    cache_frozen, cache_dir = args["cache_frozen"], args["cache_dir"]
    if not (cache_frozen == "auto" or isinstance(cache_frozen, bool)):
        raise ConfigError(f"model.cache_frozen must be auto, true or false, got {cache_frozen!r}")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise ConfigError(f"model.cache_dir must be null or a folder, got {cache_dir!r}")
    if cache_dir is not None:
        check_cache_dir(cache_dir)  # train.py also checks it against runs_dir
    cache_max_gb = args.get("cache_max_gb")
    if cache_max_gb is not None and not (is_number(cache_max_gb) and cache_max_gb > 0):
        raise ConfigError(f"model.cache_max_gb must be null or a number > 0, got {cache_max_gb!r}")
    for name in ("compile", "tf32"):
        value = args[name]
        if not isinstance(value, bool):
            raise ConfigError(f"model.{name} must be true or false, got {value!r}")
    finetune, lora = args.get("finetune", "layers"), args.get("lora")
    if finetune not in FINETUNE:
        raise ConfigError(f"model.finetune must be one of {list(FINETUNE)}, got {finetune!r}")
    if finetune == "lora":
        if lora is not None and not isinstance(lora, Mapping):
            raise ConfigError(f"model.lora must be a mapping of rank, alpha, dropout, targets, got {lora!r}")
        try:
            LoRAConfig.from_dict(lora or {})
        except ValueError as err:
            raise ConfigError(f"model.{err}") from err
