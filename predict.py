"""Classify texts with a trained model: `python predict.py ckpt_path=... text=...` (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.errors import one_line_errors
from spam_lightning.predict import run


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors(also=(OSError, ValueError)):  # bad paths, inputs, checkpoints: one line, no traceback
        run(cfg)


if __name__ == "__main__":
    main()
