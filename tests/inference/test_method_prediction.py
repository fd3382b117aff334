"""Prediction semantics: a text is spam iff P(spam) > threshold, in predict and evaluate alike.

A stub network whose P(spam) depends only on a text's token count puts texts exactly on the threshold,
so the boundary (`>`, not `>=`) is pinned for `Predictor.predict`, `predict.run`, `evaluate.run` and the
helpers evaluate uses. A tiny trained run checks that predictions on its labelled test split give the
confusion matrix of `metrics.json` and of `evaluate.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tiktoken
import torch
from helpers.smoke import compose_cfg, train_smoke
from torch import nn

import spam_lightning.inference.evaluate as evaluate
import spam_lightning.inference.predict as predict
from spam_lightning.data.preprocess import Preprocessing, get_tokenizer
from spam_lightning.data.sms_spam import LABELS as CLASS_NAMES
from spam_lightning.inference.checkpoint import TrainedModel
from spam_lightning.inference.predictor import Prediction, Predictor

TINY_ARCH = {"emb_dim": 16, "n_layers": 1, "n_heads": 2, "context_length": 64, "dropout": 0.0, "qkv_bias": True}


def confusion(predicted: list[str | None], labels: list[int]) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] (rows: true class) of the classified texts."""
    matrix = [[0, 0], [0, 0]]
    for label, truth in zip(predicted, labels, strict=True):
        if label is not None:
            matrix[truth][CLASS_NAMES.index(label)] += 1
    return matrix


# --- a stub network: P(spam) = softmax([0, n - 2])[1] for a text of n tokens ------------------------


class StubNet(nn.Module):
    """Logits (0, n - 2) for a text of n tokens: P(spam) is exactly 0.5 for two tokens (both logits 0)."""

    num_classes = 2

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(len(lengths)), lengths.float() - 2], dim=1)


def stub_probability(n_tokens: int) -> float:
    """The float32 P(spam) the Predictor computes for a text of n tokens, as a Python float."""
    return torch.tensor([[0.0, n_tokens - 2.0]]).softmax(dim=-1)[0, 1].item()


TEXTS = ["hello", "hello hello", "hello hello hello", "hello hello hello hello", ""]  # 1, 2, 3, 4 tokens, empty
LABELS = [0, 1, 0, 1, 1]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: str) -> tiktoken.Encoding:
    encoding = get_tokenizer(tokenizer_file)
    assert [len(encoding.encode_ordinary(t)) for t in TEXTS] == [1, 2, 3, 4, 0]
    return encoding


@pytest.fixture
def stub(tokenizer: tiktoken.Encoding) -> Predictor:
    preprocessing = Preprocessing(CLASS_NAMES, max_length=64, pad_length=None, padding="batch", pool="last_token")
    return Predictor(TrainedModel(StubNet(), preprocessing, {}), tokenizer, "cpu")


def test_stub_puts_texts_exactly_on_the_threshold(stub: Predictor) -> None:
    scores, _ = stub.positive_probabilities(TEXTS)
    assert scores == [stub_probability(1), 0.5, stub_probability(3), stub_probability(4), None]
    assert stub_probability(1) < 0.5 < stub_probability(3) < stub_probability(4)


# threshold -> labels of TEXTS: spam iff P(spam) > threshold; a text exactly at the threshold is ham
BOUNDARY = {
    0.5: ["ham", "ham", "spam", "spam", None],
    stub_probability(3): ["ham", "ham", "ham", "spam", None],
    stub_probability(1): ["ham", "spam", "spam", "spam", None],
    0.0: ["spam", "spam", "spam", "spam", None],
    1.0: ["ham", "ham", "ham", "ham", None],
}


@pytest.mark.parametrize("threshold", list(BOUNDARY))
def test_predictor_label_is_spam_iff_probability_above_threshold(stub: Predictor, threshold: float) -> None:
    predictions = stub.predict(TEXTS, threshold=threshold)
    assert [p.label for p in predictions] == BOUNDARY[threshold]
    for p in predictions[:-1]:
        assert p.label == ("spam" if p.positive_probability > threshold else "ham"), p  # type: ignore[operator]
    assert (predictions[-1].label, predictions[-1].error) == (None, "empty text")


@pytest.mark.parametrize("threshold", [0.5, stub_probability(3)])
def test_predict_and_evaluate_apply_the_same_boundary(
    stub: Predictor, threshold: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict.run's labels and evaluate.run's confusion matrix and misclassified rows: one rule, `>`."""
    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: stub)
    monkeypatch.setattr(evaluate, "load_predictor", lambda *args, **kwargs: stub)
    data = tmp_path / "labelled.csv"
    pd.DataFrame({"label": LABELS, "text": TEXTS}).to_csv(data, index=False)
    model_dir = tmp_path / "model"  # never read: the stub is the model
    threshold_arg = f"threshold={threshold!r}"

    output = tmp_path / "predictions.jsonl"
    predict_cfg = compose_cfg(
        "predict", f"model_dir={model_dir}", f"input_file={data}", f"output={output}", threshold_arg, "device=cpu"
    )
    predict.run(predict_cfg)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    assert [r["label"] for r in rows] == BOUNDARY[threshold]

    evaluate_cfg = compose_cfg(
        "evaluate",
        f"model_dir={model_dir}",
        f"data_file={data}",
        f"out_dir={tmp_path / 'evaluation'}",
        threshold_arg,
        "target_precision=null",
        "device=cpu",
    )
    result = evaluate.run(evaluate_cfg)
    assert result["threshold"] == threshold and result["n_skipped"] == 1
    metrics = result["metrics"]
    expected = confusion(BOUNDARY[threshold], LABELS)
    assert metrics["confusion_matrix"] == expected == confusion([r["label"] for r in rows], LABELS)
    assert (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (*expected[0], *expected[1])
    classified = [i for i, label in enumerate(BOUNDARY[threshold]) if label is not None]
    accuracy = sum(BOUNDARY[threshold][i] == CLASS_NAMES[LABELS[i]] for i in classified) / len(classified)
    assert metrics["accuracy"] == pytest.approx(accuracy)

    lines = (tmp_path / "evaluation" / "misclassified.jsonl").read_text().splitlines()
    misclassified = {m["row"]: m["predicted"] for m in map(json.loads, lines)}
    wrong = {i: BOUNDARY[threshold][i] for i in classified if BOUNDARY[threshold][i] != CLASS_NAMES[LABELS[i]]}
    assert misclassified == wrong


def test_evaluate_helpers_use_the_same_boundary() -> None:
    """The precision/recall at a chosen threshold and the metrics: a score equal to the threshold is ham."""
    scores, labels = [0.25, 0.5, 0.5, 0.75], [0, 1, 0, 1]
    assert evaluate.precision_recall_at(scores, labels, 0.5) == (1.0, 0.5)
    metrics = evaluate.binary_metrics(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels), 0.5)
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    threshold = evaluate.choose_threshold(scores, labels, 1.0)  # only the 0.75 text can be called spam
    assert threshold is not None and 0.5 <= threshold < 0.75
    assert evaluate.precision_recall_at(scores, labels, threshold) == (1.0, 0.5)


# --- a real (tiny, briefly trained) model ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict[str, Any]:
    """A smoke run (tiny model, 30 batches): its checkpoint, metrics.json and data folder."""
    tmp = tmp_path_factory.mktemp("method_smoke")
    metrics = train_smoke(tmp, sms_zip, tokenizer_file, "trainer.limit_train_batches=30", "report=false")
    return {"ckpt": Path(metrics["best_checkpoint"]), "metrics": metrics, "data_dir": tmp / "data", "tmp": tmp}


def test_predictions_on_the_test_split_reproduce_metrics_json_and_evaluate(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    test_csv = trained["data_dir"] / "seed-123" / "test.csv"
    labels = pd.read_csv(test_csv, dtype={"label": int, "text": str}, keep_default_na=False)["label"].tolist()
    output = tmp_path / "predictions.jsonl"
    predict_cfg = compose_cfg(
        "predict", f"ckpt_path={trained['ckpt']}", f"input_file={test_csv}", f"output={output}", "device=cpu"
    )
    returned: list[Prediction] = predict.run(predict_cfg)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(labels) == len(returned) == 300
    for row in rows:
        assert row["label"] == ("spam" if row["positive_probability"] > 0.5 else "ham"), row
    predicted = [row["label"] for row in rows]
    assert 0 < predicted.count("spam") < 300, "the model should call some texts spam and some ham"
    matrix = confusion(predicted, labels)

    saved = json.loads((trained["ckpt"].parent.parent / "metrics.json").read_text())["test"]
    assert matrix == saved["confusion_matrix"]
    assert sum(p == CLASS_NAMES[y] for p, y in zip(predicted, labels, strict=True)) / 300 == pytest.approx(
        saved["accuracy"], abs=1e-6
    )

    evaluate_cfg = compose_cfg(
        "evaluate",
        f"ckpt_path={trained['ckpt']}",
        f"out_dir={tmp_path / 'eval'}",
        "target_precision=null",
        "device=cpu",
    )
    result = evaluate.run(evaluate_cfg)
    assert result["metrics"]["confusion_matrix"] == matrix
    lines = (tmp_path / "eval" / "misclassified.jsonl").read_text().splitlines()
    misclassified = {m["row"]: m["predicted"] for m in map(json.loads, lines)}
    wrong = {i: p for i, (p, y) in enumerate(zip(predicted, labels, strict=True)) if p != CLASS_NAMES[y]}
    assert misclassified == wrong
