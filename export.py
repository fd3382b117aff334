"""Export a checkpoint as model.safetensors + config.json: `python export.py ckpt_path=...` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.export import run


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (OSError, ValueError) as err:  # bad paths, inputs, checkpoints: one line, no traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
