"""Classify texts with a trained model: `python predict.py ckpt_path=... text=...` (see conf/predict.yaml).

The same command as `spam-predict` (spam_lightning.cli.predict).
"""

from spam_lightning.cli import predict

if __name__ == "__main__":
    predict()
