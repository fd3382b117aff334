"""Composing the project's configs in-process, and the short smoke run that prediction, evaluation and report
tests start from (tiny model, one epoch of 20 steps, the real data)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from spam_lightning.inference.checkpoint import read_checkpoint
from spam_lightning.model.gpt import PRESETS, GPTModel
from spam_lightning.model.net import SpamNet
from spam_lightning.training.run import run as train_run

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
HELPERS = Path(__file__).resolve().parent


def compose_cfg(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def smoke_cfg(run_dir: Path, data_dir: Path, sms_zip: Path, tokenizer_file: str, *overrides: str) -> DictConfig:
    """experiment=smoke writing into run_dir, the data (from the local zip and vocabulary) in data_dir, quiet."""
    return compose_cfg(
        "train",
        "experiment=smoke",
        f"run_dir={run_dir}",
        f"data.source={sms_zip}",
        f"data.tokenizer_file={tokenizer_file}",
        f"data.data_dir={data_dir}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *overrides,
    )


def train_smoke(tmp: Path, sms_zip: Path, tokenizer_file: str, *overrides: str) -> dict[str, Any]:
    """A one-epoch smoke run into tmp/run (data in tmp/data; with "data=csv" in the overrides, the files they
    name); returns its metrics.json content."""
    csv = "data=csv" in overrides  # data=csv has no source or data_dir: the overrides name its files
    sms = [] if csv else [f"data.source={sms_zip}", f"data.data_dir={tmp / 'data'}"]
    cfg = compose_cfg(
        "train",
        "experiment=smoke",
        f"run_dir={tmp / 'run'}",
        *sms,
        f"data.tokenizer_file={tokenizer_file}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "data.eval_batch_size=100",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *overrides,
    )
    return train_run(cfg)


def copy_smoke(source: Path, tmp: Path) -> dict[str, Any]:
    """A copy into tmp of the default smoke run made once per test worker (conftest's `smoke_source`: train_smoke's
    tmp/run and tmp/data), for a test module to use as its own; returns its metrics.json content with the best
    checkpoint's path in the copy. The copy's checkpoint records the source's data folder (read only)."""
    for name in ("run", "data"):
        shutil.copytree(source / name, tmp / name)
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    metrics["best_checkpoint"] = str(tmp / "run" / "checkpoints" / Path(metrics["best_checkpoint"]).name)
    return metrics


def train_command(tmp: Path, *overrides: str, sms_zip: Path, tokenizer_file: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `python train.py experiment=smoke ...` (run from REPO)."""
    pythonpath = os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "train.py",
        "experiment=smoke",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test_after_fit=false",
        f"runs_dir={tmp / 'runs'}",
        "run_name=r",
        f"data.source={sms_zip}",
        f"data.tokenizer_file={tokenizer_file}",
        f"data.data_dir={tmp / 'data'}",
        *overrides,
    ]
    return command, env


def _ctrl_c_as_in_a_terminal() -> None:
    # An ignored signal stays ignored across exec, and the pytest process may ignore SIGINT by then (Lightning's
    # trainer sets SIG_IGN when it handles a KeyboardInterrupt): in a pytest-xdist worker that had run other tests
    # first, the run of test_run_safety's Ctrl-C case never saw its Ctrl-C and finished with status 0.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_cli(tmp: Path, *overrides: str, sms_zip: Path, tokenizer_file: str) -> subprocess.CompletedProcess:
    """`python train.py experiment=smoke ...` in a subprocess (so it can be SIGKILLed)."""
    command, env = train_command(tmp, *overrides, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )  # fmt: skip


def final_weights(tmp: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(tmp / "runs" / "r" / "checkpoints" / "last.ckpt")["state_dict"]


def make_nontrivial(net: SpamNet) -> SpamNet:
    """LayerNorm parameters and biases all non-trivial (a fresh net has ones and zeros, which hide mapping mistakes),
    and a head giving logits of order 1 (its bias is left to the caller), from the current torch seed."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
        net.gpt.out_head.weight.normal_(0.0, net.gpt.cfg.emb_dim**-0.5)
    return net


def random_124m(pool: str = "last_token") -> SpamNet:
    """GPT-2 124M's shapes with random weights (seed 0), made non-trivial, and a head with a bias (the export
    tests' stand-in for the pretrained model)."""
    torch.manual_seed(0)
    net = make_nontrivial(SpamNet(GPTModel(PRESETS["gpt2"]), 2, pool).eval())
    with torch.no_grad():
        net.gpt.out_head.bias.copy_(torch.tensor([0.3, -0.2]))
    return net
