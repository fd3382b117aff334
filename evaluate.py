"""Evaluate a trained model: `python evaluate.py ckpt_path=... [split=test|data_file=...]` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.evaluate import run


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (OSError, ValueError) as err:  # bad paths, inputs, checkpoints: one line, no traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
