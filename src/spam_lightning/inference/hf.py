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

GPT-2's tokenizer in Hugging Face's files, made from our sha256-pinned tiktoken ranks: no download.

tiktoken's GPT-2 encoding (r50k_base) and Hugging Face's GPT-2 tokenizer are the same byte-level BPE written two
ways. tiktoken stores each token's bytes with its rank (= its id); Hugging Face stores each token as a string of
"byte-level" characters (every byte mapped to a printable character, `byte_level_alphabet`) in vocab.json, and the
merges in priority order in merges.txt. The merge that makes a token is recovered by running tiktoken's BPE on the
token's bytes with only the lower-ranked tokens (`merges`): it ends in exactly two parts, the pair that merges
into it. The pre-tokenizer (ByteLevel with GPT-2's regex) is tiktoken's `r50k_pat_str`.

`write_hf_tokenizer` writes tokenizer.json (read by the fast tokenizers), vocab.json and merges.txt (the slow
ones), and tokenizer_config.json / special_tokens_map.json: pad token <|endoftext|>, right padding and
truncation at the training length, and `split_special_tokens` so that "<|endoftext|>" typed in a text is plain
text, as our preprocessing treats it (tiktoken's ordinary encoding), never the special token 50256.

The model card (README.md) of a folder exported for transformers, made with huggingface_hub's `ModelCardData` and
`ModelCard` (so the Hub reads its metadata as written): YAML metadata (library, task, license, base model, data set,
metrics as `model-index`) between `---` lines, then Markdown. The weights' license is MIT, OpenAI's GPT-2 license,
which weights fine-tuned from GPT-2 inherit (spam_lightning's code is Apache-2.0).

Everything comes from the export's record (network, preprocessing, training provenance, no local paths) and,
when the exported checkpoint is its run's best one, the run's metrics.json (test and validation metrics).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tiktoken
import torch

from spam_lightning.data.preprocess import PAD_TOKEN_ID, Preprocessing
from spam_lightning.errors import CheckpointError, UserError
from spam_lightning.model.gpt import PRESETS, GPTConfig, make_config
from spam_lightning.model.net import SpamNet
from spam_lightning.model.weights import PretrainedWeightsError, convert_hf_state_dict, hf_repo_id, to_hf_state_dict

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

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


SPECIAL = "<|endoftext|>"  # GPT-2's only special token: end of text, and our padding
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerConversionError(ValueError):
    """The ranks do not describe a byte-level BPE that Hugging Face's files can express."""


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the others (controls, space)
    for the characters from U+0100 on, in byte order (OpenAI's `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable, strict=True)), 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = 256 + extra
            extra += 1
    return {byte: chr(code) for byte, code in chars.items()}


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on `token`'s bytes with the tokens ranked below `max_rank`: repeatedly merge the adjacent
    pair whose concatenation has the lowest rank (leftmost on a tie)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's token -> id and merges.txt's pairs in priority order, from tiktoken's bytes -> rank."""
    alphabet = byte_level_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    if len(vocab) != len(ranks) or sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerConversionError("the ranks must be the ids 0..n-1 of distinct tokens")
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, rank)
        if len(parts) != 2:
            raise TokenizerConversionError(f"token {rank} ({token!r}) is not one merge of two lower-ranked tokens")
        merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def _byte_level(**options: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True, **options}


def tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, Any]:
    """The `tokenizers` library's serialisation of GPT-2's tokenizer (as the Hub's openai-community/gpt2 has it)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": PAD_TOKEN_ID,
                "content": SPECIAL,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": _byte_level(),
        "post_processor": _byte_level(trim_offsets=False),
        "decoder": _byte_level(),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],  # byte-level tokens never hold a space
        },
    }


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: GPT-2's tokenizer padding with <|endoftext|> on the right, truncating on the right at
    `model_max_length` (with truncation=True), and reading "<|endoftext|>" in a text as plain text."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "bos_token": SPECIAL,
        "eos_token": SPECIAL,
        "unk_token": SPECIAL,
        "pad_token": SPECIAL,
        "add_prefix_space": False,
        "add_bos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "added_tokens_decoder": {
            str(PAD_TOKEN_ID): {
                "content": SPECIAL,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }


def write_hf_tokenizer(tokenizer: tiktoken.Encoding, out_dir: Path, model_max_length: int) -> list[Path]:
    """Write FILES into out_dir from tiktoken's GPT-2 encoding; returns their paths."""
    if tokenizer.eot_token != PAD_TOKEN_ID or tokenizer.n_vocab != PAD_TOKEN_ID + 1:
        raise TokenizerConversionError(f"expected GPT-2's encoding ({PAD_TOKEN_ID + 1} tokens), got {tokenizer.name}")
    vocab, merges = vocab_and_merges(tokenizer._mergeable_ranks)
    full_vocab = {**vocab, SPECIAL: PAD_TOKEN_ID}
    special = {name: SPECIAL for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    contents = {
        "tokenizer.json": json.dumps(tokenizer_json(full_vocab, merges), ensure_ascii=False),
        "vocab.json": json.dumps(full_vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(tokenizer_config(model_max_length), indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    paths = []
    for name in FILES:
        path = out_dir / name
        path.write_text(contents[name], encoding="utf-8")
        paths.append(path)
    return paths


UCI_DATASET = "ucirvine/sms_spam"  # the SMS Spam Collection on the Hub
WEIGHTS_LICENSE = "mit"  # OpenAI's GPT-2 weights (github.com/openai/gpt-2/blob/master/LICENSE); the Hub's identifier
GPT2_LICENSE_URL = "https://github.com/openai/gpt-2/blob/master/LICENSE"
METRICS = {"accuracy": "accuracy", "f1": "f1", "precision": "precision", "recall": "recall", "auroc": "roc_auc"}


def _split_size(split: Mapping[str, Any]) -> int | None:
    counts = [split.get(k) for k in ("tp", "fp", "tn", "fn")]
    return int(sum(counts)) if all(isinstance(c, int | float) for c in counts) else None


def card_data(name: str, record: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> ModelCardData:
    """The card's metadata (its YAML front matter)."""
    from huggingface_hub import EvalResult, ModelCardData  # export only: prediction and serving import this module

    training = record.get("training") or {}
    pretrained = (training.get("hyper_parameters") or {}).get("pretrained")
    uci = bool((training.get("data") or {}).get("verify_checksum"))  # UCI's published sha256 was checked
    test = (metrics or {}).get("test") or {}
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Text Classification",
            dataset_type=UCI_DATASET if uci else "sms",
            dataset_name="SMS Spam Collection" if uci else "SMS spam data",
            dataset_split="test",
            metric_type=hub,
            metric_value=round(float(test[ours]), 6),
            metric_name=f"test {ours}",
        )
        for ours, hub in METRICS.items()
        if isinstance(test.get(ours), int | float)
    ]
    return ModelCardData(
        model_name=name,  # the model-index's name (written only with results)
        library_name="transformers",
        pipeline_tag="text-classification",
        license=WEIGHTS_LICENSE,
        base_model=hf_repo_id(pretrained) if pretrained in PRESETS else None,
        datasets=[UCI_DATASET] if uci else None,
        language=["en"],
        tags=["spam-detection", "sms", "gpt2", "spam_lightning", *(["onnx"] if "onnx" in record else [])],
        metrics=[r.metric_type for r in results] or None,
        eval_results=results or None,
    )


def model_card(name: str, record: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> str:
    """README.md for the exported folder `name` (its folder name, also the Hub repository's)."""
    net, training = record["net"], record.get("training") or {}
    pre = Preprocessing.from_dict(record["preprocessing"], "record")
    arch, hp, data = make_config(net["arch"]), training.get("hyper_parameters") or {}, training.get("data") or {}
    pretrained = hp.get("pretrained")
    size = f"{arch.n_layers} layers, {arch.emb_dim} dimensions, {arch.n_heads} heads, {arch.context_length} positions"
    start = (
        f"OpenAI's pretrained GPT-2 weights ([{hf_repo_id(pretrained)}](https://huggingface.co/{hf_repo_id(pretrained)}))"
        if pretrained in PRESETS
        else "random initialisation (no pretrained weights)"
        if pretrained is None
        else f"the pretrained weights file {pretrained}"
    )
    lines = [
        "---",
        card_data(name, record, metrics).to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        f"A GPT-2 classifier ({size}) that labels a text {' or '.join(f'`{label}`' for label in pre.labels)} "
        "(class ids 0, 1, ... in that order, as `id2label` in config.json): the fine-tuning of chapter 6 of *Build a "
        "Large Language Model (From Scratch)* (S. Raschka), trained with spam_lightning (PyTorch Lightning + Hydra).",
        "",
        "## Data",
        "",
        "The [UCI SMS Spam Collection](https://archive.ics.uci.edu/dataset/228/sms+spam+collection) (5,574 English "
        "SMS messages, 747 of them spam; CC BY 4.0, T. A. Almeida and J. M. Gómez Hidalgo), balanced as in the book "
        "(as many ham as spam messages, drawn at random) and split 70/10/20 into training, validation and test "
        f"sets with seed {data.get('seed')}."
        if data.get("verify_checksum")
        else f"Data from {data.get('source') or 'the run'}: not the checked UCI SMS Spam Collection.",
        "",
        "## Training",
        "",
        f"- Start: {start}; " + _what_trained(hp),
        f"- {_optimizer(hp)}, learning rate {hp.get('lr')}, weight decay {hp.get('weight_decay')}, scheduler "
        f"`{hp.get('scheduler')}`"
        + (f", {metrics['epochs']} epoch(s) ({metrics.get('global_step')} steps)" if metrics else "")
        + ".",
        "- Input: GPT-2's byte-level BPE; texts truncated to their first "
        f"{pre.token_limit} tokens; the logits of each text's last token (`pool=last_token`), padding "
        "`<|endoftext|>` on the right.",
        "- The head's bias is folded into the final LayerNorm's bias (transformers' GPT-2 classification head "
        "has no bias): exact up to float rounding, checked at export.",
        "",
        "## Results",
        "",
        _metrics_of(pre),
        "",
        *_results(metrics),
        "",
        "## Intended use and limits",
        "",
        "- For learning and experiments with SMS spam filtering in English. The data are a few thousand SMS "
        "messages collected around 2011, most of them from the UK and Singapore: expect lower accuracy on other "
        "languages, other kinds of messages, newer spam and adversarial texts. Check it on your own data before "
        "relying on it.",
        _decision_rule(pre),
        f"- Texts longer than {pre.token_limit} tokens are truncated to their first {pre.token_limit}, as in "
        "training: pass `truncation=True` (below). spam_lightning's `predict.py` gives no prediction for an empty "
        "or whitespace-only text; transformers classifies it anyway.",
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'model = "{name}"  # this folder, or the Hub repository it was uploaded to ("USER/NAME")',
        'classifier = pipeline("text-classification", model=model, truncation=True, top_k=None)',
        'print(classifier(["See you at 6", "WINNER!! Claim your prize, call 09061701461 now"]))',
        "```",
        "",
        "or `AutoTokenizer` and `AutoModelForSequenceClassification` (`tokenizer(texts, truncation=True, "
        "padding=True, return_tensors='pt')`, then `model(**inputs).logits.softmax(-1)`). With spam_lightning: "
        f"`python predict.py model_dir={name}`.",
        "",
        "`config.json` also holds spam_lightning's record (key `spam_lightning`, which transformers ignores): the "
        "network, the preprocessing and where the model came from.",
        "",
        *(_onnx_use(name) if "onnx" in record else []),
        "## License",
        "",
        _license(pretrained),
        "",
    ]
    from huggingface_hub import ModelCard

    return str(ModelCard("\n".join(lines)))  # parsed back as the Hub parses it: a malformed model-index raises


def _license(pretrained: str | None) -> str:
    own = (
        "These weights are fine-tuned from OpenAI's GPT-2 weights and inherit their license, "
        f"[MIT]({GPT2_LICENSE_URL}) (`license: mit`)."
        if pretrained in PRESETS
        else "These weights were not started from OpenAI's GPT-2 weights; they are offered under the MIT license "
        "(`license: mit`), as spam_lightning's fine-tuned GPT-2 exports are: change `license` above if the weights "
        "you started from have another."
    )
    return (
        f"{own} The training data keep their own license (the UCI SMS Spam Collection: CC BY 4.0). spam_lightning, "
        "the code that trained and exported them, is under the Apache License 2.0."
    )


def _optimizer(hp: Mapping[str, Any]) -> str:
    """The optimizer's class name as a checkpoint records it (model.optimizer), e.g. AdamW or SGD."""
    return str(hp.get("optimizer") or "torch.optim.AdamW").rsplit(".", 1)[-1]


def _onnx_use(name: str) -> list[str]:
    return [
        "`model.onnx` is the same model as an ONNX graph (inputs `input_ids` and `attention_mask` of right-padded "
        "texts, output `logits`): Hugging Face Optimum's `ORTModelForSequenceClassification.from_pretrained(model)` "
        "loads it, with `AutoTokenizer.from_pretrained(model)` as above; with spam_lightning: "
        f"`python predict.py model_dir={name} backend=onnxruntime`.",
        "",
    ]


def _metrics_of(pre: Preprocessing) -> str:
    if pre.positive_class is None:
        return "Precision, recall and F1 are macro averages over the classes, AUROC one class against the rest."
    return (
        f"Precision, recall, F1 and AUROC are those of the positive class `{pre.positive_class}` (the binary score is "
        f"P({pre.positive_class})); accuracy counts both classes."
    )


def _decision_rule(pre: Preprocessing) -> str:
    if pre.positive_class is None:
        return "- A text's label is its most probable class (no threshold)."
    negative = next(label for label in pre.labels if label != pre.positive_class)
    return (
        f"- A text is `{pre.positive_class}` when P({pre.positive_class}) > 0.5, the threshold the metrics above use, "
        f"else `{negative}`; choose your own threshold on P({pre.positive_class}) for the precision you need "
        f"(spam_lightning: `predict.py threshold=T`)."
    )


def _results(metrics: Mapping[str, Any] | None) -> list[str]:
    if not metrics or not isinstance(metrics.get("test"), Mapping):
        return ["No metrics: the exported checkpoint is not its run's best checkpoint (or the run left no metrics)."]
    splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), Mapping)]
    sizes = {s: _split_size(metrics[s]) for s in splits}
    rows = ["| metric | " + " | ".join(f"{s} ({sizes[s]} texts)" for s in splits) + " |"]
    rows.append("|---|" + "---:|" * len(splits))
    for ours in (*METRICS, "loss"):
        values = [metrics[s].get(ours) for s in splits]
        if all(isinstance(v, int | float) for v in values):
            rows.append(f"| {ours} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return rows


def _what_trained(hp: Mapping[str, Any]) -> str:
    lora = hp.get("lora") or {}
    if hp.get("finetune") == "lora":
        return (
            f"LoRA (the book's appendix E): rank {lora.get('rank')}, alpha {lora.get('alpha')} adapters on "
            f"`{lora.get('targets')}`, every original weight frozen; the adapters are merged into these weights."
        )
    return (
        f"trainable layers: `{hp.get('trainable_layers')}` (spam_lightning's `model.trainable_layers`; the others "
        "frozen)."
    )
