"""A user's machine for end-to-end tests: a fresh copy of the repository, empty caches, and the internet
played by a local HTTP server (`local_internet.LocalInternet`) that serves the three downloads at their real
URL paths: the UCI zip, GPT-2's BPE ranks file and GPT-2 124M weights (random, in the Hub's layout) at the
pinned revision.

What differs from a user's run is listed here and nowhere else:
- environment: HF_ENDPOINT and HF_HOME (the Hub stand-in), SPAM_LIGHTNING_CACHE (an empty cache folder), W&B's own
  folders (`WANDB_FOLDERS`, temporary: not the user's home) and WANDB_SILENT;
- URL settings: `URL_OVERRIDES`, the data and vocabulary URLs pointed at the server;
- `SHORT`: overrides that shorten a run (one epoch of a few batches) without bypassing any of conf/.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.local_internet import TIKTOKEN_R50K_PATH, UCI_ZIP_PATH, LocalInternet, write_gpt2_safetensors

from spam_lightning.model.weights import HF_FILENAME, HF_REVISIONS, hf_repo_id

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
SMS_ZIP = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
TOKENIZER_FILE = SHARED / "assets" / "gpt2.tiktoken"

# One epoch of 3 training batches, 2 validation batches, 2 batches of each split in the final evaluation.
SHORT = "trainer.max_epochs=1 trainer.limit_train_batches=3 trainer.limit_val_batches=2 trainer.limit_test_batches=2"
EVAL_TEXTS = 2 * 8  # what each split's evaluation sees with SHORT (batch size 8)
# W&B's own folders (settings, cache, artifact staging, default run folder): temporary, never the user's home.
WANDB_FOLDERS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")


class UserMachine:
    """`internet` serves the downloads; `clone` is a copy of the repository's files (what `git clone` gives, plus
    uncommitted work) sharing this checkout's .venv, with ../shared beside it as in ours; `env` has empty caches."""

    def __init__(self, root: Path, internet: LocalInternet) -> None:
        self.root = root
        self.internet = internet
        self.clone = root / "main"
        copy_checkout(REPO, self.clone)
        (root / "shared").symlink_to(SHARED, target_is_directory=True)
        self.env = {
            **os.environ,
            **internet.hub_env(root / "hf_home"),
            "SPAM_LIGHTNING_CACHE": str(root / "cache"),
            "PYTHONUNBUFFERED": "1",
            **{name: str(root / "wandb_home" / name.lower()) for name in WANDB_FOLDERS},
            "WANDB_SILENT": "true",
        }
        self.url_overrides = (
            f"'data.urls=[{internet.url(UCI_ZIP_PATH)}]' data.tokenizer_url={internet.url(TIKTOKEN_R50K_PATH)}"
        )

    def sh(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the clone, as a user would type it (the venv's bin first on PATH)."""
        env = {**self.env, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"}
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def train_command(self, args: str) -> str:
        """`make train ARGS=...` when the tests run in the repository's own .venv (as `make test` does), else
        `python train.py ...` with this interpreter: the make layer needs that venv, installed and current (make
        would otherwise install it again, from the clone)."""
        venv, stamp = REPO / ".venv", REPO / ".venv" / ".installed"
        installed = stamp.is_file() and stamp.stat().st_mtime >= (REPO / "pyproject.toml").stat().st_mtime
        if Path(sys.prefix).resolve() == venv.resolve() and installed:
            return f"make train ARGS={shlex.quote(args)}"
        return f"{shlex.quote(sys.executable)} train.py {args}"

    def downloads(self) -> dict[str, int]:
        """GET requests so far for each of the three downloads."""
        hub = f"/{hf_repo_id('gpt2')}/resolve/"
        return {
            "zip": self.internet.count("GET", UCI_ZIP_PATH),
            "tokenizer": self.internet.count("GET", TIKTOKEN_R50K_PATH),
            "weights": sum(1 for r in self.internet.requests if r.method == "GET" and r.path.startswith(hub)),
        }

    def run_dirs(self) -> list[Path]:
        runs = self.clone / "runs"
        return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def serve_downloads(internet: LocalInternet, weights_dir: Path) -> None:
    """The three downloads at their real paths; GPT-2 124M weights random (seed 0), at the pinned revision only."""
    internet.add_file(UCI_ZIP_PATH, SMS_ZIP)
    internet.add_file(TIKTOKEN_R50K_PATH, TOKENIZER_FILE)
    weights = write_gpt2_safetensors(weights_dir / HF_FILENAME, "gpt2", seed=0)
    internet.add_hf_file(hf_repo_id("gpt2"), HF_FILENAME, weights, revision=HF_REVISIONS["gpt2"])


def copy_checkout(repo: Path, dest: Path) -> None:
    """The files git tracks plus untracked ones it does not ignore, with their timestamps (so make sees the
    venv's install stamp as current), and the checkout's .venv linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if (repo / ".venv").exists():
        (dest / ".venv").symlink_to(repo / ".venv", target_is_directory=True)
