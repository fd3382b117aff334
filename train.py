"""Fine-tune GPT-2 as an SMS spam classifier: `python train.py [overrides]` (see README and conf/train.yaml).

The same command as `spam-train` (spam_lightning.cli.train): one run, a grid (`-m a=1,2 b=x,y`) or a search
(`-m hparams_search=optuna`); under torchrun, pass run_name=NAME.
"""

from spam_lightning.cli import train

if __name__ == "__main__":
    train()
