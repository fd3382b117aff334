"""The export for Hugging Face transformers (format=hf): transformers' AutoModelForSequenceClassification,
AutoTokenizer and pipeline load the folder without a download and give predict.py's P(spam); models that transformers
cannot compute are refused for it and exported in our own layout, which transformers refuses to load."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.scripts import run_script
from helpers.smoke import copy_smoke, random_124m

from spam_lightning.data.preprocess import Preprocessing, get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.inference.checkpoint import RECORD_KEY, TrainedModel, load_trained
from spam_lightning.inference.evaluate import load_split
from spam_lightning.inference.export import export_checkpoint, write_export
from spam_lightning.inference.exported import read_export
from spam_lightning.inference.hf import HFExportError, check_fold, fold_head_bias, model_card
from spam_lightning.inference.predictor import Predictor

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5  # |P(spam) transformers - P(spam) predict.py|
LONG = "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! " * 12
TRICKY = [
    "",
    " ",
    "  multiple   spaces  ",
    "line\r\nbreaks\r\n",
    "tabs\t\tand\n\nnewlines",
    "emoji 😀🎉👍🏽 ok",
    "<|endoftext|>",
    "win <|endoftext|> cash<|endoftext|>",
    "naïve café, 中文, עברית",
    "'s 're 'll 'VE 123456789 3.14",
    "\u00a0nbsp\u2009thin\x00ctrl",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict[str, Any]:
    """A smoke run (tiny model, pool=last_token) exported with format=hf, and its test split."""
    tmp = tmp_path_factory.mktemp("hf")
    metrics = copy_smoke(smoke_source, tmp)
    ckpt = Path(metrics["best_checkpoint"])
    done = run_script("export.py", f"ckpt_path={ckpt}", "format=hf", f"out_dir={tmp / 'hf'}", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    texts, _ = load_split(predictor, "test")
    return {"tmp": tmp, "ckpt": ckpt, "hf": tmp / "hf", "metrics": metrics, "predictor": predictor, "texts": texts}


def max_diff(a: list[float], b: list[float | None]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))  # type: ignore[operator]


def spam_probability(rows: list[list[dict[str, Any]]]) -> list[float]:
    """P(spam) from the pipeline's top_k=None output (every label's score per text)."""
    return [next(d["score"] for d in row if d["label"] == "spam") for row in rows]


def test_transformers_gives_predict_py_probabilities_on_the_test_split(smoke: dict[str, Any]) -> None:
    texts, predictor = smoke["texts"], smoke["predictor"]
    ours, encoded = predictor.positive_probabilities(texts)
    assert len(texts) == 300 and any(e.truncated for e in encoded)  # some test texts are longer than 128 tokens

    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(smoke["hf"], output_loading_info=True)
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert not any(info.values()), info  # every tensor loaded, none missing (random), none unexpected
    assert model.score.bias is None and model.config.pad_token_id == 50256
    assert model.config.id2label == {0: "ham", 1: "spam"} and model.config.label2id == {"ham": 0, "spam": 1}
    tokenizer = transformers.AutoTokenizer.from_pretrained(smoke["hf"])
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side) == ("<|endoftext|>", 50256, "right")
    assert tokenizer.model_max_length == predictor.preprocessing.token_limit == 128
    assert tokenizer(texts, truncation=True)["input_ids"] == [e.ids for e in encoded]
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        auto = model(**batch).logits.softmax(-1)[:, 1].tolist()
    print(f"transformers {transformers.__version__}: max |P(spam) - predict.py's| {max_diff(auto, ours):.3g}")
    assert auto == pytest.approx(ours, abs=TOLERANCE, rel=0)

    classifier = transformers.pipeline("text-classification", model=str(smoke["hf"]), truncation=True, top_k=None)
    assert spam_probability(classifier(texts)) == pytest.approx(ours, abs=TOLERANCE, rel=0)
    assert spam_probability(classifier(texts, batch_size=16)) == pytest.approx(ours, abs=TOLERANCE, rel=0)
    # predict.py on the same folder: the same network as transformers', through our own reader
    from_dir = Predictor.from_dir(smoke["hf"], device="cpu").positive_probabilities(texts)[0]
    assert from_dir == pytest.approx(ours, abs=1e-6, rel=0)


def test_long_texts_and_special_token_text_are_read_as_in_training(smoke: dict[str, Any]) -> None:
    """A text longer than the context is truncated to model_max_length (not an IndexError); "<|endoftext|>" typed in
    a text is plain text (not the pad token, which transformers would skip when pooling)."""
    texts = [LONG, "Call now <|endoftext|>", "<|endoftext|>", "Win <|endoftext|> cash"]
    ours, encoded = smoke["predictor"].positive_probabilities(texts)
    assert encoded[0].truncated and len(encoded[0].ids) == 128 and all(50256 not in e.ids for e in encoded)
    classifier = transformers.pipeline("text-classification", model=str(smoke["hf"]), truncation=True, top_k=None)
    assert spam_probability(classifier(texts)) == pytest.approx(ours, abs=TOLERANCE, rel=0)


def test_tokenizer_equals_tiktoken_on_every_sms_and_tricky_strings(
    smoke: dict[str, Any], sms_tsv: Path, tokenizer_file: str
) -> None:
    texts = [line.split("\t", 1)[1] for line in sms_tsv.read_text(encoding="utf-8").splitlines()]
    texts += TRICKY
    assert len(texts) == 5574 + len(TRICKY)
    theirs = transformers.AutoTokenizer.from_pretrained(smoke["hf"])(texts)["input_ids"]
    enc = get_tokenizer(tokenizer_file)
    assert theirs == [enc.encode(t, disallowed_special=()) for t in texts]  # special-token text encoded as text


def test_no_local_paths_in_any_exported_file(smoke: dict[str, Any], tokenizer_file: str) -> None:
    """Not the checkpoint's folder, the data folder (both under smoke["tmp"]), the repository or the shared data."""
    pool_mean = with_pool(load_trained(smoke["ckpt"]), "mean")
    write_export(pool_mean, smoke["tmp"] / "own", get_tokenizer(tokenizer_file), format="auto")
    repo = Path(__file__).resolve().parents[2]
    for folder in (smoke["hf"], smoke["tmp"] / "own"):
        for path in folder.iterdir():
            data = path.read_bytes()
            for local in (smoke["tmp"], repo, Path(tokenizer_file).parents[1]):
                assert str(local).encode() not in data, (path, local)
    record = json.loads((smoke["hf"] / "config.json").read_text())[RECORD_KEY]
    assert record["training"]["checkpoint"] == smoke["ckpt"].name
    assert record["training"]["data"]["data_dir"] is None and record["training"]["data"]["seed"] == 123


def test_model_card_in_the_hubs_format_with_the_runs_metrics(smoke: dict[str, Any]) -> None:
    card = (smoke["hf"] / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["ucirvine/sms_spam"] and "base_model" not in meta  # random init: no base model
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    test = smoke["metrics"]["test"]
    assert results["accuracy"] == pytest.approx(test["accuracy"]) and results["f1"] == pytest.approx(test["f1"])
    assert f"| accuracy | {smoke['metrics']['validation']['accuracy']:.4f} | {test['accuracy']:.4f} |" in card
    assert "truncation=True" in card and "## Intended use and limits" in card


def test_model_card_loads_with_huggingface_hub_and_has_a_license(smoke: dict[str, Any]) -> None:
    """The card as the Hub's library reads it: ModelCard.load parses the metadata into ModelCardData (model-index
    into EvalResults, which raises on a malformed one), with the weights' license, MIT (OpenAI's GPT-2 weights')."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.load(smoke["hf"] / "README.md")
    data = card.data
    assert isinstance(data, ModelCardData) and data.license == "mit"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["accuracy"] == pytest.approx(smoke["metrics"]["test"]["accuracy"])
    assert {r.dataset_type for r in data.eval_results} == {"ucirvine/sms_spam"} and data.model_name == "hf"
    # Round trip: the metadata written is what ModelCardData writes for what it read.
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()
    assert "## License" in card.text and "MIT license" in card.text and "Apache License 2.0" in card.text
    assert "- AdamW, learning rate" in card.text  # the optimizer the checkpoint records
    record = json.loads((smoke["hf"] / "config.json").read_text())[RECORD_KEY]
    record["training"]["hyper_parameters"]["optimizer"] = "torch.optim.SGD"
    assert "- SGD, learning rate" in model_card("hf", record, None)


def test_the_head_bias_is_folded_into_the_final_layernorm(smoke: dict[str, Any], tokenizer_file: str) -> None:
    net = load_trained(smoke["ckpt"]).net
    bias = net.gpt.out_head.bias.detach()
    assert bias.abs().max() > 1e-4  # a trained bias: the fold matters
    model = transformers.AutoModelForSequenceClassification.from_pretrained(smoke["hf"])
    delta = model.transformer.ln_f.bias.detach() - net.gpt.final_norm.bias.detach()
    torch.testing.assert_close(net.gpt.out_head.weight.detach() @ delta, bias, rtol=0, atol=1e-6)
    # A head whose rows are linearly dependent cannot absorb an arbitrary bias: refused, not approximated.
    with pytest.raises(HFExportError, match="cannot be folded"):
        fold_head_bias(torch.ones(2, 8), torch.tensor([1.0, -1.0]))
    # check_fold runs both networks: a wrong LayerNorm bias is caught.
    pre = load_trained(smoke["ckpt"]).preprocessing
    with pytest.raises(HFExportError, match="folded head's logits differ"):
        check_fold(net, net.gpt.final_norm.bias.detach() + 0.01, pre, get_tokenizer(tokenizer_file))


def with_pool(model: TrainedModel, pool: str, pad_length: int | None = None) -> TrainedModel:
    """The same weights recorded with another pooling (and padded length)."""
    padding = pad_length if pad_length is not None else "batch"
    pre = dataclasses.replace(model.preprocessing, pool=pool, pad_length=pad_length, padding=padding)
    model.net.pool = pool
    return TrainedModel(model.net, pre, model.training)


@pytest.mark.parametrize(
    ("pool", "pad_length", "expected"),
    [
        ("first", None, "pool=first: transformers has no GPT-2 classifier that pools the first token"),
        ("mean", None, "pool=mean: transformers has no GPT-2 classifier"),
        ("last", 120, "pool=last reads the final padded position"),
    ],
)
def test_pools_transformers_cannot_compute_are_refused_and_exported_in_our_layout(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str, pool: str, pad_length: int | None, expected: str
) -> None:
    model = with_pool(load_trained(smoke["ckpt"]), pool, pad_length)
    tokenizer = get_tokenizer(tokenizer_file)
    with pytest.raises(HFExportError) as refused:
        write_export(model, tmp_path / "hf", tokenizer, format="hf")
    assert expected in str(refused.value) and "train with model.pool=last_token" in str(refused.value)
    assert not (tmp_path / "hf").exists()  # refused before anything is written

    paths = write_export(model, tmp_path / "auto", tokenizer)  # format=auto: our own layout
    assert sorted(p.name for p in paths) == ["gpt2.tiktoken", "spam_lightning.json", "spam_lightning.safetensors"]
    with pytest.raises(OSError):  # no config.json: transformers refuses instead of building a random GPT-2
        transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "auto")
    with pytest.raises((OSError, ValueError)):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "auto")
    texts = smoke["texts"][:20]
    expected_probs = Predictor(model, tokenizer, device="cpu").positive_probabilities(texts)[0]
    assert Predictor.from_dir(tmp_path / "auto", device="cpu").positive_probabilities(texts)[0] == expected_probs


def test_a_fixed_padded_length_is_the_truncation_length(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str
) -> None:
    """pool=last_token with rows padded to 60 tokens (data.padding=60): texts are cut at 60 tokens, and so are
    they by transformers' tokenizer (model_max_length 60); the padding itself changes nothing (causal attention)."""
    model = with_pool(load_trained(smoke["ckpt"]), "last_token", pad_length=60)
    tokenizer = get_tokenizer(tokenizer_file)
    write_export(model, tmp_path, tokenizer, format="hf")
    texts = [LONG, *smoke["texts"][:30]]
    ours, encoded = Predictor(model, tokenizer, device="cpu").positive_probabilities(texts)
    assert encoded[0].truncated and len(encoded[0].ids) == 60
    classifier = transformers.pipeline("text-classification", model=str(tmp_path), truncation=True, top_k=None)
    assert classifier.tokenizer.model_max_length == 60
    assert spam_probability(classifier(texts)) == pytest.approx(ours, abs=TOLERANCE, rel=0)


def test_predict_py_reads_both_layouts_and_overwrite_switches_cleanly(smoke: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "m"
    for layout, record in (("spam_lightning", "spam_lightning.json"), ("hf", "config.json")):
        export_checkpoint(smoke["ckpt"], folder, overwrite=True, format=layout)
        names = {p.name for p in folder.iterdir()}
        assert record in names and not names & ({"config.json", "spam_lightning.json"} - {record}), names
        assert ("model.safetensors" in names) == (layout == "hf")
        done = run_script("predict.py", f"model_dir={folder}", 'text="Free entry! Text WIN to 80086"', "device=cpu",
                          "format=jsonl", timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        p = json.loads(done.stdout)["positive_probability"]
        assert p == pytest.approx(smoke["predictor"].positive_probabilities(["Free entry! Text WIN to 80086"])[0][0])
    with pytest.raises(ConfigError, match=r"one of \['auto', 'hf', 'spam_lightning', 'onnx'\], got 'tf'"):
        export_checkpoint(smoke["ckpt"], tmp_path / "x", format="tf")


def test_edited_transformers_files_and_earlier_exports_are_refused(smoke: dict[str, Any], tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(smoke["hf"], dest, copy_function=os.link)
        return dest

    edited = copy("config")
    config = json.loads((edited / "config.json").read_text())
    config["n_head"] = 1
    (edited / "config.json").unlink()
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"transformers' fields \['n_head'\] differ from the spam_lightning"):
        read_export(edited)
    tokenizer = copy("tokenizer")
    (tokenizer / "tokenizer_config.json").unlink()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: missing, or its sha256 differs"):
        read_export(tokenizer)
    # format /2 (our record at the top of config.json, our weights in model.safetensors): export again
    old = tmp_path / "v2"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"format": "spam_lightning.classifier/2", "net": {}}))
    with pytest.raises(CheckpointError, match=r"exported by an earlier version .* export the checkpoint again"):
        read_export(old)


def test_124m_architecture_exports_exactly(tmp_path: Path, sms_tsv: Path, tokenizer_file: str) -> None:
    pre = Preprocessing(labels=("ham", "spam"), max_length=1024, pad_length=None, padding="batch", pool="last_token")
    training = {"hyper_parameters": {"pretrained": "gpt2", "trainable_layers": "last_block", "lr": 5e-5}}
    model = TrainedModel(random_124m(), pre, training)
    tokenizer = get_tokenizer(tokenizer_file)
    texts = [line.split("\t", 1)[1] for line in sms_tsv.read_text(encoding="utf-8").splitlines()[:20]]
    ours = Predictor(model, tokenizer, device="cpu").positive_probabilities(texts)[0]
    assert max(ours) - min(ours) > 0.01  # the texts matter
    write_export(model, tmp_path, tokenizer, format="hf")

    classifier = transformers.pipeline("text-classification", model=str(tmp_path), truncation=True, top_k=None)
    assert classifier.model.config.n_layer == 12 and classifier.tokenizer.model_max_length == 1024
    theirs = spam_probability(classifier(texts, batch_size=8))
    print(f"124M, transformers {transformers.__version__}: max |P(spam) - predict.py's| {max_diff(theirs, ours):.3g}")
    assert theirs == pytest.approx(ours, abs=TOLERANCE, rel=0)
    assert Predictor.from_dir(tmp_path, device="cpu").positive_probabilities(texts)[0] == pytest.approx(ours, abs=1e-6)
    meta = yaml.safe_load((tmp_path / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert meta["base_model"] == "openai-community/gpt2" and meta["license"] == "mit" and "model-index" not in meta
    card = (tmp_path / "README.md").read_text()
    assert "fine-tuned from OpenAI's GPT-2 weights and inherit their license, [MIT]" in card
