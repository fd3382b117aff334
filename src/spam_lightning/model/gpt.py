"""A compact GPT-2 in plain PyTorch, readable top to bottom.

Token + position embeddings -> N pre-LayerNorm transformer blocks -> final LayerNorm -> output head.
Parameter names follow the book (chapter 4); `spam_lightning.model.weights` maps OpenAI's published
weights (Hugging Face layout) onto them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE vocabulary, <|endoftext|> = 50256 included
    context_length: int = 1024  # number of learned position embeddings
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.0  # the book fine-tunes with drop_rate 0.0
    qkv_bias: bool = True  # OpenAI's GPT-2 has biases on the query/key/value projections

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPT config {name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPT config dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),  # 1558M
}


def make_config(arch: str | Mapping[str, Any], **overrides: Any) -> GPTConfig:
    """The one place `model.arch` becomes a GPTConfig: a preset name ("gpt2", ...) or a mapping of GPTConfig
    fields (a dict or Hydra's DictConfig); `overrides` that are not None win (e.g. dropout)."""
    if isinstance(arch, GPTConfig):
        base = arch.to_dict()
    elif isinstance(arch, str):
        if arch not in PRESETS:
            raise ValueError(f"unknown GPT-2 preset {arch!r}; expected one of {sorted(PRESETS)} or a mapping")
        base = PRESETS[arch].to_dict()
    else:
        known = {f.name for f in fields(GPTConfig)}
        unknown = set(arch) - known
        if unknown:
            raise ValueError(f"unknown GPT config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        base = {key: arch[key] for key in arch}  # a DictConfig's values come out resolved
    base.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig(**base)


# How a classifier turns a sequence's hidden states into one vector (GPTModel.pooled).
POOLS = ("last", "last_token", "first", "mean")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            w(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
            for w in (self.W_query, self.W_key, self.W_value)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.att = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))

    def forward_at(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """self(x)[b, pos[b]] for every row b, computing only those positions (no dropout): (B, T, D) -> (B, D).

        A classifier reads one position of the top block, so it needs one query per row. Keys and values are
        linear in the normed input h, so that query meets h itself: q.(W_k h_j + b_k) = (W_k^T q).h_j + q.b_k,
        and sum_j a_j (W_v h_j + b_v) = W_v (sum_j a_j h_j) + b_v (the weights a_j sum to 1). No key or value is
        computed: O(heads T D + D^2) a row instead of O(T D^2), and the MLP runs at one position. (Adapters on the
        keys or values, as LoRA's, make them more than a Linear: then they are computed.)
        """
        b, t, d = x.shape
        att = self.att
        heads, head_dim = att.n_heads, d // att.n_heads
        h = self.norm1(x)
        rows = torch.arange(b, device=x.device)
        q = att.W_query(h[rows, pos]).view(b, heads, head_dim)
        plain = type(att.W_key) is nn.Linear and type(att.W_value) is nn.Linear
        if plain:
            w_key = att.W_key.weight.view(heads, head_dim, d)
            scores = torch.einsum("bhd,btd->bht", torch.einsum("bhe,hed->bhd", q, w_key), h)
            if att.W_key.bias is not None:  # the same at every position, so the softmax cancels it; kept so that
                scores = scores + (q * att.W_key.bias.view(heads, head_dim)).sum(-1, keepdim=True)  # it has a grad
        else:  # adapters (LoRA) on the keys or values: computed for every position
            k, v = (w(h).view(b, t, heads, head_dim) for w in (att.W_key, att.W_value))
            scores = torch.einsum("bhe,bthe->bht", q, k)
        # One query per row: plain attention arithmetic. (SDPA with a mask picks cuDNN for bf16 on recent
        # GPUs, which builds a new plan for every sequence length: seconds per epoch with dynamic padding.)
        hidden = torch.arange(t, device=x.device) > pos[:, None]  # the causal mask's row: later positions
        weights = (scores / math.sqrt(head_dim)).masked_fill(hidden[:, None, :], float("-inf")).softmax(dim=-1)
        if plain:
            mixed = torch.einsum("bht,btd->bhd", weights, h)
            values = torch.einsum("bhd,hed->bhe", mixed, att.W_value.weight.view(heads, head_dim, d)).reshape(b, d)
            if att.W_value.bias is not None:
                values = values + att.W_value.bias
        else:
            values = torch.einsum("bht,bthe->bhe", weights, v).reshape(b, d)
        out = x[rows, pos] + att.out_proj(values)
        return out + self.ff(self.norm2(out))


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.dropout)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(_init_weights)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (and embedding dropout): (B, T) ids -> (B, T, D)."""
        t = idx.shape[1]
        if t > self.cfg.context_length:
            raise ValueError(f"sequence length {t} exceeds the context length {self.cfg.context_length}")
        pos = torch.arange(t, device=idx.device)
        return self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Apply transformer blocks start..stop-1 to hidden states x."""
        for block in self.trf_blocks[start:stop]:
            x = block(x)
        return x

    def pooled(
        self, x: torch.Tensor, lengths: torch.Tensor | None, pool: str, start: int = 0, one_position_top: bool = True
    ) -> torch.Tensor:
        """Blocks start.. on hidden states x (B, T, D), the final LayerNorm, and one vector per row: (B, D).

        pool (POOLS): last, first, last_token (each row's last real token) or mean (over the real
        positions); lengths (B,) are the true token counts of right-padded rows. With
        one_position_top the top block computes only the pooled position (forward_at: exact, no dropout).
        """
        if pool in ("last_token", "mean") and lengths is None:
            raise ValueError(f"pool={pool!r} needs the true sequence lengths")
        if pool == "mean":
            x = self.run_blocks(x, start)
            mask = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
            normed = self.final_norm(x) * mask[..., None]
            return normed.sum(dim=1) / lengths[:, None].to(normed.dtype)
        b, t, _ = x.shape
        if pool == "last_token":
            pos = lengths - 1
        elif pool == "last":  # the final position: a padding token when the row is padded
            pos = torch.full((b,), t - 1, device=x.device)
        else:  # first
            pos = torch.zeros(b, dtype=torch.long, device=x.device)
        n_layers = self.cfg.n_layers
        if one_position_top and start < n_layers:
            top = self.trf_blocks[-1].forward_at(self.run_blocks(x, start, n_layers - 1), pos)
        else:
            top = self.run_blocks(x, start)[torch.arange(b, device=x.device), pos]
        return self.final_norm(top)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm output for every position: (B, T) -> (B, T, D)."""
        return self.final_norm(self.run_blocks(self.embed(idx)))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.hidden_states(idx))


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation (normal, std 0.02); used when no pretrained weights are loaded.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
