"""Errors a user can fix (a config value, a file, a missing download), as opposed to bugs.

The entry points print a `UserError` as one `error: ...` message and exit with status 1, without a
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class UserError(Exception):
    """Bad input or environment: the message says what was wrong and where (file, line, config key)."""


class ConfigError(UserError, ValueError):
    """A config value, or a checkpoint that does not fit the config; raised before any training starts."""


class DataError(UserError, ValueError):
    """Bad input data: the message names the file (and line) and what was expected."""


class DownloadError(UserError, RuntimeError):
    """A file could not be downloaded; the message names it and how to run without the download."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or [message]  # one message per failed download

    @classmethod
    def combine(cls, errors: list[DownloadError]) -> DownloadError:
        """One error for several failed downloads (each on its own line), so offline use fails once, listing all."""
        failures = [failure for err in errors for failure in err.failures]
        if len(failures) == 1:
            return errors[0]
        return cls("several downloads failed:\n" + "\n".join(f"- {f}" for f in failures), failures)


class DivergedError(UserError, ArithmeticError):
    """Training produced a NaN or Inf loss: the run stops before that step changes any weight."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or exported model that cannot be used (missing, corrupt, foreign, from another version,
    or trained on other frozen weights than the ones available)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled objects other than tensors and plain containers: refused, never run."""


class MissingExtraError(UserError, ImportError):
    """An optional package that a command or option needs is not installed; the message names the extra to install."""


def require_extra(feature: str, extra: str, *modules: str) -> None:
    """Raise MissingExtraError unless one of `modules` can be imported: '`feature` needs `modules[0]`, which is not
    installed: pip install ".[extra]"'."""
    if not any(importlib.util.find_spec(module) is not None for module in modules):
        raise MissingExtraError(f'{feature} needs {modules[0]}, which is not installed: pip install ".[{extra}]"')


def user_error(err: BaseException) -> BaseException | None:
    """The user-fixable error behind `err`, else None. Hydra wraps what a constructor raised while it
    instantiates the config; Lightning raises MisconfigurationException for trainer settings (a missing GPU)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException  # only the entry points need it

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, UserError | MisconfigurationException):
            return cause
        cause = cause.__cause__
    return None


def one_line_cause(err: BaseException, also: tuple[type[Exception], ...] = ()) -> BaseException | None:
    """What an entry point prints as its one `error:` line for `err`, or None to keep the traceback: a bug, or
    any error under HYDRA_FULL_ERROR=1 (Hydra's switch for full tracebacks, which we follow)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    return user_error(err) or (err if isinstance(err, also) else None)


@contextmanager
def one_line_errors(also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """For entry points: a user error (or one of `also`) ends the program with one `error: ...` line, exit 1."""
    try:
        yield
    except Exception as err:
        cause = one_line_cause(err, also)
        if cause is None:
            raise  # a bug: keep the traceback
        raise SystemExit(f"error: {cause}") from None


# The checks of config values (Hydra passes `threshold=nan` as float nan, `threshold=abc` as a string,
# `batch_size=true` as a bool): each raises a ConfigError naming the key, e.g.
# `threshold=nan: expected a number in [0, 1]`.


def check_number(key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """A finite int or float in [low, high] ((low, high] with low_open), else a ConfigError naming the key."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (low < value if low_open else low <= value) or value > high:
        raise ConfigError(
            f"{key}={show_value(value)}: expected a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        )
    return float(value)


def check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An int in [minimum, maximum] (not a bool, not a float), else a ConfigError naming the key."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    if not integer or value < minimum or (maximum is not None and value > maximum):
        expected = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key}={show_value(value)}: expected an integer {expected}")
    return value


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of `choices`, compared as text (`precision=32` arrives as the int 32), else a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) not in choices:
        raise ConfigError(f"{key}={show_value(value)}: expected one of {', '.join(choices)}")
    return str(value)


def show_value(value: Any) -> str:
    """A value as it would be written on the command line: nan, 2.5, true, null, 'abc'."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)
