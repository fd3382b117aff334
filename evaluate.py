"""Evaluate a trained model: `python evaluate.py ckpt_path=... [split=test|data_file=...]` (see conf/evaluate.yaml).

The same command as `spam-evaluate` (spam_lightning.cli.evaluate).
"""

from spam_lightning.cli import evaluate

if __name__ == "__main__":
    evaluate()
