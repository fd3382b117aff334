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

from spam_lightning.errors import UserError

_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class ResolvedConfigLauncher(_SubprocessScriptLauncher):
    """Starts ranks 1..n-1 as `python -m spam_lightning.training.run <resolved config.yaml>`."""

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
        command = [sys.executable, "-m", "spam_lightning.training.run", str(self.config_file)]
        self.procs = [
            subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(rank)})
            for rank in range(1, self.num_processes)
        ]

    def finish(self) -> None:
        """Wait for the other ranks and undo the process-wide DDP state, so a next run (multirun) starts clean.

        Called from a `finally:` while rank 0's exception propagates, it kills the other ranks instead of
        waiting: they may wait in a collective for rank 0 until the 30-minute timeout, which in a sweep
        would hold up the next job. Lightning's observer thread watches the same list of processes and
        kills this process when one of them exits non-zero: emptying the list first ends its watch.
        """
        rank_zero_failed = sys.exc_info()[0] is not None
        procs = list(self.procs)
        if rank_zero_failed:
            self.procs.clear()  # in place: the observer's list
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        failed = [p.args for p in procs if p.wait() != 0 and not rank_zero_failed]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in self.env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if failed:
            raise RuntimeError(f"{len(failed)} DDP worker process(es) failed; see their output above")


class WorldSizeError(UserError, RuntimeError):
    """An external launcher (torchrun, SLURM) started another number of processes than the trainer expects."""


def check_world_size(trainer: Trainer) -> None:
    """Refuse a launch whose WORLD_SIZE is not trainer.num_nodes x devices.

    With torchrun --nnodes=2 but trainer.num_nodes=1, Lightning's strategy auto picks a single-device
    strategy in every process: each one would silently train its own copy into the same run directory.
    """
    world_size = os.environ.get("WORLD_SIZE")
    if world_size is None or not world_size.isdigit():
        return
    expected = trainer.num_nodes * trainer.num_devices
    if int(world_size) != expected:
        raise WorldSizeError(
            f"the launcher started {world_size} processes (WORLD_SIZE={world_size}), but trainer.num_nodes="
            f"{trainer.num_nodes} x trainer.devices={trainer.num_devices} is {expected}: set trainer.num_nodes to "
            "the number of nodes (torchrun --nnodes) and trainer.devices to the processes per node "
            "(--nproc_per_node), or launch that many processes"
        )


def use_resolved_config_launcher(trainer: Trainer, config_file: Path) -> ResolvedConfigLauncher | None:
    """Swap Lightning's re-run-the-command launcher for ours; None when Lightning starts no processes.

    First checks that an external launcher's world size matches the trainer (`check_world_size`).
    """
    check_world_size(trainer)
    launcher = trainer.strategy.launcher
    if type(launcher) is not _SubprocessScriptLauncher or launcher.cluster_environment.creates_processes_externally:
        return None
    ours = ResolvedConfigLauncher(launcher, config_file)
    trainer.strategy._launcher = ours
    return ours
