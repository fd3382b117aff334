"""Serve a trained model over HTTP: `python serve.py model_dir=... ` (see conf/serve.yaml and README: Serving)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.errors import one_line_errors
from spam_lightning.serve import run


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors(also=(OSError, ValueError)):  # bad paths, ports, checkpoints: one line, no traceback
        run(cfg)


if __name__ == "__main__":
    main()
