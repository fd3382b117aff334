"""Fine-tune GPT-2 as an SMS spam classifier, as in chapter 6 of *Build a LLM (From Scratch)*.

As a library (README: Using it as a library):

    from spam_lightning import SmsSpamDataModule, SpamClassifier   # the Lightning parts: bring your own Trainer
    from spam_lightning import load_predictor                      # a trained model: checkpoint or exported folder
    predictor = load_predictor(model_dir="runs/NAME/export")
    predictor.predict(["Free entry! Win a prize"])                 # [Prediction(label="spam", ...)]

The names below are imported when first used: `import spam_lightning` alone loads neither torch nor Lightning.

The package follows the two flows, each subpackage opening with what it owns; a lower one never imports an upper one
(tests/test_layout.py): errors, files, paths (plumbing) < model < data < inference < training < cli.
"""

import logging
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("spam_lightning")
except PackageNotFoundError:  # the source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

# Public name -> the module that defines it.
_PUBLIC = {
    "GPTConfig": "model.gpt",  # GPT-2's architecture (presets: gpt2, gpt2-medium, gpt2-large, gpt2-xl)
    "GPTModel": "model.gpt",  # the GPT-2 network
    "build_gpt": "model.weights",  # a GPTModel with OpenAI's pretrained weights (from the Hub) or a .safetensors file
    "SpamNet": "model.net",  # GPT-2 + the classification head: what training, prediction and export share
    "build_net": "model.net",  # a SpamNet of a GPT-2 size, with OpenAI's weights or a seeded random init
    "SpamClassifier": "training.module",  # the LightningModule: frozen lower layers, last-token loss, metrics
    "SmsSpamDataModule": "data.modules",  # the LightningDataModule: download, balance, split, tokenize, pad
    "get_tokenizer": "data.preprocess",  # tiktoken's GPT-2 encoding from a local or cached ranks file
    "load_trained": "inference.checkpoint",  # a checkpoint's SpamNet and preprocessing record
    "load_predictor": "inference.predictor",  # a Predictor from a checkpoint or an exported folder
    "Predictor": "inference.predictor",
    "Prediction": "inference.predictor",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'spam_lightning' has no attribute {name!r}")
    return getattr(import_module(f"spam_lightning.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)


# Like Lightning: show our INFO messages (data summary, parameter counts) when nobody configured
# logging; under Hydra, which configures the root logger, they go through Hydra's handlers.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
