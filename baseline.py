"""TF-IDF + logistic regression on the training splits: `python baseline.py [data=...]` (conf/baseline.yaml).

The same command as `spam-baseline` (spam_lightning.cli.baseline).
"""

from spam_lightning.cli import baseline

if __name__ == "__main__":
    baseline()
