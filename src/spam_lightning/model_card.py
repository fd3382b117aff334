"""The model card (README.md) of a folder exported for transformers, in the Hugging Face Hub's format: YAML
metadata (library, task, license, base model, data set, metrics) between `---` lines, then Markdown.

Everything comes from the export's record (network, preprocessing, training provenance, no local paths) and,
when the exported checkpoint is its run's best one, the run's metrics.json (test and validation metrics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from spam_lightning.gpt import PRESETS, make_config
from spam_lightning.preprocess import Preprocessing
from spam_lightning.weights import hf_repo_id

UCI_DATASET = "ucirvine/sms_spam"  # the SMS Spam Collection on the Hub
METRICS = {"accuracy": "accuracy", "f1": "f1", "precision": "precision", "recall": "recall", "auroc": "roc_auc"}


def _split_size(split: Mapping[str, Any]) -> int | None:
    counts = [split.get(k) for k in ("tp", "fp", "tn", "fn")]
    return int(sum(counts)) if all(isinstance(c, int | float) for c in counts) else None


def metadata(name: str, record: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card's YAML front matter."""
    training = record.get("training") or {}
    pretrained = (training.get("hyper_parameters") or {}).get("pretrained")
    uci = bool((training.get("data") or {}).get("verify_checksum"))  # UCI's published sha256 was checked
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-classification"}
    if pretrained in PRESETS:
        meta |= {"license": "mit", "base_model": hf_repo_id(pretrained)}  # OpenAI's GPT-2 weights: MIT
    if uci:
        meta["datasets"] = [UCI_DATASET]
    meta |= {"language": ["en"], "tags": ["spam-detection", "sms", "gpt2", "spam_lightning"]}
    test = (metrics or {}).get("test") or {}
    results = [
        {"type": hub, "value": round(float(test[ours]), 6), "name": f"test {ours}"}
        for ours, hub in METRICS.items()
        if isinstance(test.get(ours), int | float)
    ]
    if results:
        meta["metrics"] = [r["type"] for r in results]
        dataset = {"name": "SMS Spam Collection" if uci else "SMS spam data", "type": UCI_DATASET if uci else "sms"}
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": {**dataset, "split": "test"},
                        "metrics": results,
                    }
                ],
            }
        ]
    return meta


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
        yaml.safe_dump(metadata(name, record, metrics), sort_keys=False, allow_unicode=True).rstrip(),
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
        f"- AdamW, learning rate {hp.get('lr')}, weight decay {hp.get('weight_decay')}, scheduler "
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
    ]
    return "\n".join(lines)


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
