"""Fine-tune GPT-2 as an SMS spam classifier: `python train.py [overrides]` (see README and conf/).

Sweeps: `python train.py -m a=1,2 b=x,y` (grid) or `python train.py -m hparams_search=optuna`. In a
sweep a job that raises is recorded as failed (failed.json in its folder) and the sweep goes on; the
sweep summary lists it, and the exit status says whether the sweep failed (hydra.callbacks.sweep_summary
.fail_on: a grid fails if any job failed, a search if none succeeded; see spam_lightning.sweep).
Under torchrun: see _torchrun_setup. A user error (config value, data file, failed download) is one `error:`
message and exit status 1; a run that fails before it starts leaves no run directory.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from spam_lightning.errors import one_line_cause
from spam_lightning.rundir import remove_unstarted
from spam_lightning.sweep import exit_code, run_job_in_sweep
from spam_lightning.train import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        metrics = run_job_in_sweep(lambda: run(cfg), Path(cfg.run_dir))
    else:
        try:
            metrics = run(cfg)
        except Exception as err:
            remove_unstarted(Path(cfg.run_dir))  # a run that failed before it started leaves no folder
            cause = one_line_cause(err)
            if cause is None:
                raise  # a bug: keep the traceback
            raise SystemExit(f"error: {cause}") from None
    # Returned for sweepers: the monitored metric of this job (None: failed, or no metrics).
    return (metrics or {}).get("validation", {}).get("accuracy")


def _torchrun_setup() -> None:
    """Under torchrun every process runs this script: one shared run directory, written by global rank 0 only."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    if not any(arg.lstrip("+").startswith("run_name=") for arg in sys.argv[1:]):
        raise SystemExit(
            "train.py under torchrun: pass run_name=NAME (the same on every node); otherwise each node "
            "names its run directory after its own start time"
        )
    if os.environ.get("RANK", "0") != "0":  # Hydra of the other ranks: no .hydra/ folder, no log file
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _null_config_groups() -> None:
    """`logger=null` turns logging off, as in lightning-hydra-template: Hydra cannot set a config group to null
    from the command line, so it becomes `~logger` (the group removed)."""
    sys.argv = ["~logger" if arg == "logger=null" else arg for arg in sys.argv]


if __name__ == "__main__":
    _null_config_groups()
    _torchrun_setup()
    main()
    sys.exit(exit_code())
