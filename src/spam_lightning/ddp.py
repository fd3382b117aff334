"""Starting the extra DDP ranks of one training run.

Lightning's default launcher starts rank k by re-running the command line (`python train.py ...`).
Under Hydra that goes wrong twice: a `-m` sweep is started again in every rank (duplicate jobs), and
defaults such as the timestamped `run_name` are evaluated again (a run directory per rank). Instead,
rank 0 writes the run's fully resolved config and the other ranks run exactly that config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch.distributed
from lightning.pytorch import Trainer
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class ResolvedConfigLauncher(_SubprocessScriptLauncher):
    """Starts ranks 1..n-1 as `python -m spam_lightning.train <resolved config.yaml>`."""

    def __init__(self, launcher: _SubprocessScriptLauncher, config_file: Path) -> None:
        super().__init__(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
        self.config_file = config_file
        self.env_before = {k: os.environ.get(k) for k in _DDP_ENV}

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update(
            MASTER_ADDR=env.main_address,
            MASTER_PORT=str(env.main_port),
            NODE_RANK=str(env.node_rank()),
            LOCAL_RANK=str(env.local_rank()),
            WORLD_SIZE=str(self.num_processes * self.num_nodes),
        )
        command = [sys.executable, "-m", "spam_lightning.train", str(self.config_file)]
        self.procs = [
            subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(rank)})
            for rank in range(1, self.num_processes)
        ]

    def finish(self) -> None:
        """Wait for the other ranks and undo the process-wide DDP state, so a next run (multirun) starts clean."""
        failed = [p.args for p in self.procs if p.wait() != 0]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in self.env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if failed:
            raise RuntimeError(f"{len(failed)} DDP worker process(es) failed; see their output above")


def use_resolved_config_launcher(trainer: Trainer, config_file: Path) -> ResolvedConfigLauncher | None:
    """Swap Lightning's re-run-the-command launcher for ours; None when Lightning starts no processes."""
    launcher = trainer.strategy.launcher
    if type(launcher) is not _SubprocessScriptLauncher or launcher.cluster_environment.creates_processes_externally:
        return None
    ours = ResolvedConfigLauncher(launcher, config_file)
    trainer.strategy._launcher = ours
    return ours
