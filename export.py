"""Export a checkpoint as a self-contained model folder: `python export.py ckpt_path=...` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.errors import one_line_errors
from spam_lightning.export import run


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors(also=(OSError, ValueError)):  # bad paths, inputs, checkpoints: one line, no traceback
        run(cfg)


if __name__ == "__main__":
    main()
