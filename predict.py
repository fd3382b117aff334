"""Classify texts with a trained model: `python predict.py ckpt_path=... text=...` (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.predict import run


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (OSError, ValueError) as err:  # bad paths, inputs, checkpoints: one line, no traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
