"""The classifier network: GPT-2 trunk, pooling and a linear head, as a plain `nn.Module`.

One class for training (`SpamClassifier.net`), prediction, export and the benchmarks. Like nanoGPT's
`GPT(GPTConfig(**model_args))`, a trained net is rebuilt from `SpamNet.args()`, which every checkpoint and
export records. The forward pass has two halves so that a frozen prefix can run without autograd and be
cached (`spam_lightning.feature_cache`):

    frozen_features(input_ids, stop)          embeddings + blocks [0, stop)
    head_logits(hidden, lengths, start)       blocks [start, n), final LayerNorm, pooling, head
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spam_lightning.gpt import POOLS, GPTModel, make_config


class SpamNet(nn.Module):
    def __init__(self, gpt: GPTModel, num_classes: int, pool: str) -> None:
        """`gpt` (random or pretrained) with its vocabulary head replaced by Linear(emb_dim, num_classes)."""
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}, expected one of {list(POOLS)}")
        self.gpt = gpt
        self.gpt.out_head = nn.Linear(gpt.cfg.emb_dim, num_classes)
        self.num_classes = num_classes
        self.pool = pool

    @classmethod
    def from_args(cls, args: Mapping[str, Any], device: str | torch.device | None = None) -> SpamNet:
        """The net `args()` describes (on the meta device: shapes only, for a state dict to be assigned)."""
        with torch.device(device or "cpu"):
            return cls(GPTModel(make_config(args["arch"])), int(args["num_classes"]), args["pool"])

    def args(self) -> dict[str, Any]:
        return {"arch": self.gpt.cfg.to_dict(), "num_classes": self.num_classes, "pool": self.pool}

    def frozen_features(self, input_ids: torch.Tensor, stop: int) -> torch.Tensor:
        """Embeddings + blocks [0, stop): (B, T) ids -> (B, T, D) hidden states."""
        return self.gpt.run_blocks(self.gpt.embed(input_ids), 0, stop)

    def head_logits(
        self, hidden: torch.Tensor, lengths: torch.Tensor | None, start: int = 0, one_position_top: bool = True
    ) -> torch.Tensor:
        """Blocks [start, n) on (B, T, D) hidden states, the final LayerNorm, pooling and the head: (B, C) logits.

        `lengths` (B,) are the true token counts of right-padded rows (needed by last_token and mean). With
        `one_position_top` the top block computes only the pooled position (exact; no dropout there).
        """
        return self.gpt.out_head(self.gpt.pooled(hidden, lengths, self.pool, start, one_position_top))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head_logits(self.gpt.embed(input_ids), lengths)
