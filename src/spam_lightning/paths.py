"""Where things live: the configs, and the project folder that the default paths (runs/, data/) are under.

Relative default paths must not depend on the directory a command is started from: `python ~/spam_lightning/
train.py` from anywhere writes into the project's runs/ and data/, as `make train` does. Paths typed on the command
line (runs_dir=..., ckpt_path=...) are, as with any command, relative to the current directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT_ENV = "SPAM_LIGHTNING_ROOT"  # set it to put runs/ and data/ under another folder
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when the package is used from a checkout
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"  # the configs inside an installed wheel (pyproject.toml)


def _script_folder() -> Path | None:
    return Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None


def _checkout() -> Path | None:
    """The checkout whose script runs (`python train.py`), else the one holding this package, else None (a wheel)."""
    for folder in (_script_folder(), CHECKOUT):
        if folder is not None and (folder / "conf" / "train.yaml").is_file():
            return folder
    return None


def project_dir() -> Path:
    """$SPAM_LIGHTNING_ROOT; else the checkout whose script runs (`python train.py`) or that holds this package (an
    editable install's console scripts); else, for a package installed from a wheel, the current directory."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    return _checkout() or Path.cwd()


def config_dir() -> Path:
    """The configs of the checkout (as in project_dir), else the ones packaged in the wheel."""
    checkout = _checkout()
    return checkout / "conf" if checkout is not None else PACKAGED_CONF


if not OmegaConf.has_resolver("project_dir"):
    OmegaConf.register_new_resolver("project_dir", lambda: str(project_dir()))  # conf/train.yaml: root_dir
