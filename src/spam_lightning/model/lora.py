"""LoRA (low-rank adaptation) as in appendix E of the book: `linear(x) + alpha * (x @ A @ B)`.

Every targeted `nn.Linear` of a `SpamNet` becomes a `LoRALinear` that keeps the layer's own `weight` and `bias`
(same parameter names, so checkpoints and the pretrained weights' keys do not change) and adds `lora_A` (in, rank),
initialised as the book does (Kaiming uniform, a=sqrt(5), on the (in, rank) tensor), and `lora_B` (rank, out),
zeros: a new adapter leaves the network's outputs unchanged. `merge_lora` folds the adapters into the weights
(W + alpha * (A @ B)^T) and puts plain `nn.Linear` layers back: prediction and every export format see an
ordinary SpamNet.

Scaling differs from PEFT's: the book multiplies by `alpha`; PEFT by `lora_alpha / r` (`lora_alpha / sqrt(r)`
with use_rslora), and PEFT stores the transposes (lora_A.weight (r, in), lora_B.weight (out, r)). The book's
alpha=16 at rank 16 is PEFT's lora_alpha=256 (tests/model/test_lora.py checks the mapping against PEFT).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# model.lora.targets: layer names, per block unless noted, and groups of them.
LAYERS = {
    "query": "att.W_query",
    "key": "att.W_key",
    "value": "att.W_value",
    "attn_out": "att.out_proj",
    "ff_in": "ff.layers.0",
    "ff_out": "ff.layers.2",
    "head": "gpt.out_head",  # the new classification head (not in a block)
}
GROUPS = {
    "attention": ("query", "key", "value", "attn_out"),
    "feed_forward": ("ff_in", "ff_out"),
    "all": tuple(LAYERS),
}
BOOK_TARGETS = ("attention", "feed_forward", "head")  # appendix E: every nn.Linear, the head included
ADAPTERS = ("lora_A", "lora_B")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 16.0  # the book's scaling: the adapter adds alpha * x @ A @ B
    dropout: float = 0.0  # on the adapter's input only (as PEFT's lora_dropout); the book has none
    targets: tuple[str, ...] = BOOK_TARGETS

    def __post_init__(self) -> None:
        rank, alpha, dropout, targets = self.rank, self.alpha, self.dropout, self.targets
        if not (type(rank) is int and rank >= 1):
            raise ValueError(f"lora.rank={rank!r}: expected an integer >= 1")
        if not (type(alpha) in (int, float) and math.isfinite(alpha)):
            raise ValueError(f"lora.alpha={alpha!r}: expected a finite number")
        if not (type(dropout) in (int, float) and 0.0 <= dropout < 1.0):
            raise ValueError(f"lora.dropout={dropout!r}: expected a number in [0, 1)")
        if isinstance(targets, str) or not isinstance(targets, Iterable):
            raise ValueError(f"lora.targets={targets!r}: expected a list of layer names")
        valid = (*GROUPS, *LAYERS)
        unknown = [t for t in targets if t not in valid]
        if unknown or not targets:
            raise ValueError(f"lora.targets={list(targets)}: expected a non-empty list of {', '.join(valid)}")
        object.__setattr__(self, "targets", tuple(targets))
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "dropout", float(dropout))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoRAConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"lora has unknown keys {unknown}; expected {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: tuple(v) if k == "targets" and not isinstance(v, str) else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    @property
    def layers(self) -> frozenset[str]:
        """The targeted layer names (LAYERS' keys), groups expanded."""
        return frozenset(name for t in self.targets for name in GROUPS.get(t, (t,)))


class LoRALinear(nn.Module):
    """An nn.Linear's `weight` and `bias` (the same Parameters) plus the adapter: y = x W^T + b + alpha x A B."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.alpha = alpha
        self.lora_dropout = nn.Dropout(dropout)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, **like))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the book's: fan_in is the (in, rank) tensor's rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.alpha * (self.lora_dropout(x) @ self.lora_A @ self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (without dropout)."""
        with torch.device(self.weight.device):
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            delta = self.alpha * (self.lora_A @ self.lora_B).t()
            linear.weight = nn.Parameter(self.weight + delta.to(self.weight.dtype), self.weight.requires_grad)
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias.detach().clone(), self.bias.requires_grad)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[1]}, alpha={self.alpha:g}"


def target_paths(n_layers: int, config: LoRAConfig) -> list[str]:
    """The module paths inside a SpamNet that get adapters, in network order."""
    per_block = [LAYERS[name] for name in LAYERS if name != "head" and name in config.layers]
    paths = [f"gpt.trf_blocks.{i}.{layer}" for i in range(n_layers) for layer in per_block]
    return paths + (["gpt.out_head"] if "head" in config.layers else [])


def apply_lora(net: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace the targeted nn.Linear layers of a SpamNet by LoRALinear (in place); returns their paths."""
    paths = target_paths(len(net.gpt.trf_blocks), config)
    for path in paths:
        parent, _, name = path.rpartition(".")
        base = net.get_submodule(path)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA target {path} is a {type(base).__name__}, not an nn.Linear")
        setattr(net.get_submodule(parent), name, LoRALinear(base, config.rank, config.alpha, config.dropout))
    return paths


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight and put plain nn.Linear layers back (in place)."""
    for path, module in list(net.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, name = path.rpartition(".")
            setattr(net.get_submodule(parent), name, module.merged())
    return net


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (…lora_A, …lora_B)."""
    return name.rpartition(".")[2] in ADAPTERS


def first_adapted_block(n_layers: int, config: LoRAConfig) -> int:
    """The lowest block with adapters (n_layers when only the head has one): what runs below is frozen."""
    return 0 if config.layers - {"head"} else n_layers
