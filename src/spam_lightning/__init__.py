"""Fine-tune GPT-2 as an SMS spam classifier, as in chapter 6 of *Build a LLM (From Scratch)*."""

import logging

# Like Lightning: show our INFO messages (data summary, parameter counts) when nobody configured
# logging; under Hydra, which configures the root logger, they go through Hydra's handlers.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
