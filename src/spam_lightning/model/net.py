"""The classifier network: GPT-2 trunk, pooling and a linear head, as a plain `nn.Module`.

One class for training (`SpamClassifier.net`), prediction, export and the benchmarks. `build_net` makes one from the
model config's `net` node (GPT-2 of a preset or custom size, OpenAI's weights or a seeded random init, the head and
its pooling) and checks those values; training hands it to the LightningModule, as lightning-hydra-template injects
its `net`. Like nanoGPT's
`GPT(GPTConfig(**model_args))`, a trained net is rebuilt from `SpamNet.args()`, which every checkpoint and
export records. The forward pass has two halves so that a frozen prefix can run without autograd and be
cached (`spam_lightning.training.feature_cache`):

    frozen_features(input_ids, stop)          embeddings + blocks [0, stop)
    head_logits(hidden, lengths, start)       blocks [start, n), final LayerNorm, pooling, head
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spam_lightning.errors import ConfigError
from spam_lightning.model.gpt import POOLS, PRESETS, GPTConfig, GPTModel, make_config
from spam_lightning.model.weights import build_gpt, random_provenance

SIZES = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads")  # GPTConfig's positive ints


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
        # build_net's arguments, and the frozen weights' record of a seeded random init (its initial tensors' sha256):
        # what training records about where the weights came from. None for a net rebuilt from a record.
        self.origin: dict[str, Any] | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any], device: str | torch.device | None = None) -> SpamNet:
        """The net `args()` describes (on the meta device: shapes only, for a state dict to be assigned)."""
        arch = check_args(args)
        with torch.device(device or "cpu"):
            return cls(GPTModel(arch), args["num_classes"], args["pool"])

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


def check_args(args: Any) -> GPTConfig:
    """The architecture of recorded `SpamNet.args()` (from a checkpoint or config.json), every value checked
    first: a ValueError names the key (net.KEY) and what was expected."""
    if not isinstance(args, Mapping) or set(args) != {"arch", "num_classes", "pool"}:
        got = sorted(args) if isinstance(args, Mapping) else type(args).__name__
        raise ValueError(f"net must be a mapping with the keys ['arch', 'num_classes', 'pool'], got {got}")
    num_classes, pool, arch = args["num_classes"], args["pool"], args["arch"]
    if not (type(num_classes) is int and num_classes >= 2):  # type(): a bool (JSON true) is no count
        raise ValueError(f"net.num_classes must be an int >= 2, got {num_classes!r}")
    if pool not in POOLS:
        raise ValueError(f"net.pool must be one of {list(POOLS)}, got {pool!r}")
    if isinstance(arch, str) and arch in PRESETS:
        return PRESETS[arch]
    if not isinstance(arch, Mapping):
        raise ValueError(f"net.arch must be a preset {sorted(PRESETS)} or a mapping of GPT config fields, got {arch!r}")
    unknown = sorted(set(arch) - set(GPTConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"net.arch has unknown keys {unknown}; expected a subset of {sorted(GPTConfig.__dataclass_fields__)}"
        )
    for key in SIZES:
        if key in arch and not (type(arch[key]) is int and arch[key] > 0):
            raise ValueError(f"net.arch.{key} must be a positive int, got {arch[key]!r}")
    dropout = arch.get("dropout", 0.0)
    if not (type(dropout) in (int, float) and 0.0 <= dropout < 1.0):
        raise ValueError(f"net.arch.dropout must be a number in [0, 1), got {dropout!r}")
    if type(arch.get("qkv_bias", True)) is not bool:
        raise ValueError(f"net.arch.qkv_bias must be true or false, got {arch['qkv_bias']!r}")
    try:
        return make_config(arch)
    except ValueError as err:  # emb_dim not divisible by n_heads
        raise ValueError(f"net.arch: {err}") from err


def build_net(
    arch: str | Mapping[str, Any] = "gpt2",  # GPT-2 preset name or a mapping of GPTConfig fields
    pretrained: str | os.PathLike[str] | None = "gpt2",  # preset: OpenAI's weights; a .safetensors path; None: random
    init_seed: int | None = None,  # pretrained=None: the seed of the init (small checkpoints), else the global RNG
    dropout: float | None = None,  # overrides the architecture's dropout when set
    num_classes: int | None = 2,  # None: 2 (train.py passes the data's class count)
    pool: str = "last",  # last (position T-1, the book) | last_token (lengths-1) | first | mean
) -> SpamNet:
    """GPT-2 with its vocabulary head replaced by Linear(emb_dim, num_classes): the network the model config's `net`
    node describes, every value checked first (a ConfigError names the key model.KEY)."""
    num_classes = 2 if num_classes is None else num_classes
    if isinstance(arch, Mapping):
        arch = dict(arch)
    if pretrained is not None and not isinstance(pretrained, str | os.PathLike):
        raise ConfigError(f"model.pretrained must be None, a preset name or a path, got {pretrained!r}")
    if init_seed is not None and not (isinstance(init_seed, int) and not isinstance(init_seed, bool)):
        raise ConfigError(f"model.init_seed must be null or an integer, got {init_seed!r}")
    number = isinstance(dropout, int | float) and not isinstance(dropout, bool) and math.isfinite(dropout)
    if dropout is not None and not (number and 0.0 <= dropout < 1.0):
        raise ConfigError(f"model.dropout must be None or in [0, 1), got {dropout!r}")
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2):
        raise ConfigError(f"model.num_classes must be an integer >= 2, got {num_classes!r}")
    if pool not in POOLS:
        raise ConfigError(f"model.pool must be one of {list(POOLS)}, got {pool!r}")
    cfg = make_config(arch, dropout=dropout)
    gpt = build_gpt(cfg, pretrained, init_seed)
    seeded = pretrained is None and init_seed is not None
    frozen_weights = random_provenance(init_seed, gpt.state_dict()) if seeded else None  # before the head is replaced
    net = SpamNet(gpt, num_classes, pool)
    net.origin = {
        "arch": arch,
        "pretrained": None if pretrained is None else os.fspath(pretrained),
        "init_seed": init_seed,
        "dropout": dropout,
        "frozen_weights": frozen_weights,
    }
    return net
