"""Fine-tune GPT-2 as an SMS spam classifier: `python train.py [overrides]` (see README and conf/)."""

import hydra
from omegaconf import DictConfig

from spam_lightning.train import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    # Returned for sweepers: the monitored metric of this job.
    return metrics.get("validation", {}).get("accuracy")


if __name__ == "__main__":
    main()
