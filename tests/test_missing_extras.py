"""A command or option whose optional package is not installed stops with one line naming the extra that brings it
(pyproject.toml's optional-dependencies), exit status 1, no traceback. Each case runs the real command with the
package's modules made unimportable (helpers/without_modules.py). The ONNX extra's cases are in test_export_onnx.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TOKENIZER_FILE
from helpers.scripts import run_script
from helpers.smoke import HELPERS

SMOKE = ("experiment=smoke", f"data.tokenizer_file={TOKENIZER_FILE}")
# (modules made missing, command line, the one line it must end with)
CASES = {
    "serve": (
        "litserve",
        ["serve.py", "model_dir=nowhere"],
        'serve.py needs litserve, which is not installed: pip install ".[serve]"',
    ),
    "fastapi-offline": (
        "fastapi_offline",
        ["serve.py", "model_dir=nowhere"],
        'serve.py needs fastapi_offline, which is not installed: pip install ".[serve]"',
    ),
    "tensorboard": (
        "tensorboard,tensorboardX",
        ["train.py", *SMOKE, "logger=tensorboard"],
        'logger=tensorboard needs tensorboard, which is not installed: pip install ".[tensorboard]"',
    ),
    "mlflow": (
        "mlflow",
        ["train.py", *SMOKE, "logger=mlflow"],
        'logger=mlflow needs mlflow, which is not installed: pip install ".[mlflow]"',
    ),
    "wandb": (
        "wandb",
        ["train.py", *SMOKE, "logger=wandb"],
        'logger=wandb needs wandb, which is not installed: pip install ".[wandb]"',
    ),
    "optuna": (
        "optuna",
        ["train.py", "-m", *SMOKE, "hparams_search=optuna"],
        'hparams_search=optuna needs optuna, which is not installed: pip install ".[search]"',
    ),
    "submitit": (
        "hydra_plugins.hydra_submitit_launcher",
        ["train.py", "-m", *SMOKE, "hydra/launcher=submitit_slurm"],
        "hydra/launcher=submitit_slurm needs hydra_plugins.hydra_submitit_launcher, which is not installed: "
        'pip install ".[slurm]"',
    ),
    "scikit-learn": (
        "sklearn",
        ["baseline.py", f"data.tokenizer_file={TOKENIZER_FILE}"],
        'baseline.py needs scikit-learn: pip install ".[baseline]"',
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_missing_extra_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    modules, command, message = CASES[case]
    script, *args = command
    if script == "train.py":
        args.append(f"runs_dir={tmp_path / 'runs'}")
    done = run_script(str(HELPERS / "without_modules.py"), modules, script, *args, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    if script == "train.py" and "-m" not in args:  # a run refused before it starts leaves no folder
        assert not any((tmp_path / "runs").glob("*/*"))
