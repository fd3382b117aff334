"""Export a checkpoint as a model folder: `python export.py ckpt_path=... [format=hf|onnx]` (see conf/export.yaml).

The same command as `spam-export` (spam_lightning.cli.export).
"""

from spam_lightning.cli import export

if __name__ == "__main__":
    export()
