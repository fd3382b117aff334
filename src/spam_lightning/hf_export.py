"""A trained SpamNet as Hugging Face transformers' `GPT2ForSequenceClassification`: its config.json and weights.

transformers' class runs GPT-2 and the final LayerNorm, applies `score` (a Linear with no bias) at every position
and keeps the logits of each row's rightmost token that is not `pad_token_id`. That is our pool=last_token when
the pad token is <|endoftext|> (50256), which our texts never contain: preprocessing encodes "<|endoftext|>" typed
in a text as plain text, and the exported tokenizer does the same (`split_special_tokens`).

Our head has a bias b; `score` has none. Since the head reads the final LayerNorm's output h = g * x_hat + beta,
W h + b = W (g * x_hat + beta + delta) when W delta = b: the bias is folded into the LayerNorm's bias (delta by
least squares, exact for a full-rank W with fewer classes than dimensions). `fold_head_bias` checks the
solution, and `check_fold` the logits of the folded network in float32, before anything is written.

pool=last (the book's: the final padded position, a padding token for most texts), first and mean have no
transformers class: `unsupported` says why, and export.py writes our own format for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken
import torch

from spam_lightning.errors import CheckpointError, UserError
from spam_lightning.gpt import GPTConfig, make_config
from spam_lightning.net import SpamNet
from spam_lightning.preprocess import Preprocessing
from spam_lightning.tokenizer import PAD_TOKEN_ID
from spam_lightning.weights import PretrainedWeightsError, convert_hf_state_dict, to_hf_state_dict

PREFIX = "transformer."  # GPT2ForSequenceClassification's trunk; its head is `score`
FOLD_TOLERANCE = 1e-5  # the folded network's logits may differ from the trained one's by this x max(1, |logits|)
PROBE_TEXTS = (  # what check_fold runs both networks on
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121",
    "See you at 6",
    "URGENT! Call 09061701461 to claim your £900 prize",
    "ok",
    "Sorry, I'll call later <|endoftext|>",
)


class HFExportError(UserError, ValueError):
    """A model that transformers' GPT2ForSequenceClassification cannot reproduce exactly."""


def unsupported(net: SpamNet, preprocessing: Preprocessing) -> str | None:
    """Why transformers' GPT2ForSequenceClassification cannot compute this model's predictions (None: it can)."""
    fix = "train with model.pool=last_token (the default) to export for transformers"
    if net.pool == "last":
        return (
            "pool=last reads the final padded position (a padding token for every text shorter than the padded "
            "length), but transformers' GPT2ForSequenceClassification reads each text's last non-padding token, "
            f"so its predictions would differ; {fix}"
        )
    if net.pool in ("first", "mean"):
        return f"pool={net.pool}: transformers has no GPT-2 classifier that pools the {net.pool} token(s); {fix}"
    if not net.gpt.cfg.qkv_bias:
        return "qkv_bias=false: transformers' GPT-2 always has query/key/value biases"
    if preprocessing.pad_token_id != PAD_TOKEN_ID:
        return f"pad_token_id {preprocessing.pad_token_id}: transformers pools the last token that is not padding"
    return None


def hf_config(net_args: Mapping[str, Any], preprocessing: Preprocessing) -> dict[str, Any]:
    """config.json's transformers fields for `SpamNet.args()`: a GPT2Config of GPT2ForSequenceClassification."""
    arch = make_config(net_args["arch"])
    labels = preprocessing.labels
    return {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": arch.vocab_size,
        "n_positions": arch.context_length,
        "n_embd": arch.emb_dim,
        "n_layer": arch.n_layers,
        "n_head": arch.n_heads,
        "n_inner": None,  # 4 x n_embd
        "activation_function": "gelu_pytorch_tanh",  # torch's tanh GELU, ours (nn.GELU(approximate="tanh"))
        "resid_pdrop": arch.dropout,
        "embd_pdrop": arch.dropout,
        "attn_pdrop": arch.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": PAD_TOKEN_ID,
        "eos_token_id": PAD_TOKEN_ID,
        "pad_token_id": preprocessing.pad_token_id,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification",
        "torch_dtype": "float32",
        "use_cache": True,
    }


def fold_head_bias(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """delta with weight @ delta = bias (the minimum-norm least-squares solution, in float64); a HFExportError
    if no delta reproduces the bias within FOLD_TOLERANCE (a head whose rows are linearly dependent)."""
    w, b = weight.detach().double().cpu(), bias.detach().double().cpu()
    delta = torch.linalg.pinv(w) @ b
    residual = float((w @ delta - b).abs().max())
    if residual > FOLD_TOLERANCE * max(1.0, float(b.abs().max())):
        raise HFExportError(
            f"the head's bias cannot be folded into the final LayerNorm (residual {residual:.3g} > {FOLD_TOLERANCE}: "
            "its weight rows are linearly dependent); export with format=spam_lightning"
        )
    return delta.to(bias.dtype)


def check_fold(net: SpamNet, ln_bias: torch.Tensor, pre: Preprocessing, tokenizer: tiktoken.Encoding) -> float:
    """The largest logit difference between `net` and the same net with its head bias folded into `ln_bias`, on
    PROBE_TEXTS in float32; a HFExportError beyond FOLD_TOLERANCE x max(1, |logits|)."""
    ids, _ = pre.encode(tokenizer, PROBE_TEXTS)
    input_ids, lengths = pre.pad(ids)
    norm, head = net.gpt.final_norm, net.gpt.out_head
    saved = norm.bias.detach().clone(), head.bias.detach().clone()
    with torch.no_grad():
        before = net(input_ids, lengths)
        norm.bias.copy_(ln_bias)
        head.bias.zero_()
        try:
            after = net(input_ids, lengths)
        finally:
            norm.bias.copy_(saved[0])
            head.bias.copy_(saved[1])
    diff = float((after - before).abs().max())
    if not diff <= FOLD_TOLERANCE * max(1.0, float(before.abs().max())):
        raise HFExportError(
            f"the folded head's logits differ from the trained ones by {diff:.3g} (tolerance {FOLD_TOLERANCE}); "
            "export with format=spam_lightning"
        )
    return diff


def hf_state_dict(net: SpamNet, pre: Preprocessing, tokenizer: tiktoken.Encoding) -> dict[str, torch.Tensor]:
    """GPT2ForSequenceClassification's tensors for `net`, the head's bias folded (and checked)."""
    cfg = net.gpt.cfg
    ours = {k.removeprefix("gpt."): v for k, v in net.state_dict().items()}
    weight, bias = ours.pop("out_head.weight"), ours.pop("out_head.bias")
    ln_bias = ours["final_norm.bias"] + fold_head_bias(weight, bias)
    check_fold(net, ln_bias, pre, tokenizer)
    trunk = to_hf_state_dict({**ours, "final_norm.bias": ln_bias}, cfg)
    return {**{PREFIX + k: v for k, v in trunk.items()}, "score.weight": weight.detach().cpu().contiguous()}


def net_state(hf_state: Mapping[str, torch.Tensor], cfg: GPTConfig, num_classes: int, source: str) -> dict:
    """SpamNet's state dict from GPT2ForSequenceClassification's tensors (the head's bias zero: it is folded)."""
    state = dict(hf_state)
    score = state.pop("score.weight", None)
    if score is None or tuple(score.shape) != (num_classes, cfg.emb_dim):
        got = None if score is None else tuple(score.shape)
        raise CheckpointError(f"{source}: score.weight must have shape {(num_classes, cfg.emb_dim)}, got {got}")
    if not all(key.startswith(PREFIX) for key in state):
        raise CheckpointError(f"{source}: unexpected tensors {sorted(k for k in state if not k.startswith(PREFIX))}")
    try:
        gpt = convert_hf_state_dict(state, cfg, source)
    except PretrainedWeightsError as err:
        raise CheckpointError(str(err)) from err
    gpt |= {"out_head.weight": score, "out_head.bias": torch.zeros(num_classes, dtype=score.dtype)}
    return {f"gpt.{k}": v for k, v in gpt.items()}


def config_differences(config: Mapping[str, Any], net_args: Mapping[str, Any], pre: Preprocessing) -> Sequence[str]:
    """The transformers fields of config.json that differ from what the record (net, preprocessing) gives."""
    expected = hf_config(net_args, pre)
    return [key for key, value in expected.items() if config.get(key) != value]
