"""Run one of the repository's entry points (train.py, predict.py, ...) as a user would, from its root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(
    script: str,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python script args...` in the repository root; output captured as text, exit status not checked.
    `env` adds to (does not replace) this process's environment."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        input=stdin,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
