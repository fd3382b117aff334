"""Serve a trained model over HTTP: `python serve.py model_dir=...` (see conf/serve.yaml and README: Serving).

The same command as `spam-serve` (spam_lightning.cli.serve).
"""

from spam_lightning.cli import serve

if __name__ == "__main__":
    serve()
