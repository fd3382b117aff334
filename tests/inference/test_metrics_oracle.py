"""The metrics training logs (spam_lightning.inference.metrics, SpamClassifier's test loop, metrics.json) and
those evaluate.py computes (binary_metrics, multiclass_metrics), checked against scikit-learn on the same predictions.

The multi-class data is imbalanced so that macro, micro and weighted averages differ (asserted first): a metric
computed with the wrong average fails. What ours claims (metrics.py, README "Your own data"): binary metrics with
class 1 positive and spam iff P > 0.5; more classes: macro averages, "accuracy" the mean per-class recall
(torchmetrics' macro accuracy, sklearn's balanced_accuracy_score), one-vs-rest macro AUROC, per-class precision,
recall and F1, the confusion matrix with rows the true class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.smoke import make_nontrivial, train_smoke
from helpers.trainers import quiet_trainer
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torch.utils.data import DataLoader

from spam_lightning.inference.evaluate import binary_metrics, multiclass_metrics
from spam_lightning.inference.metrics import classification_metrics, per_class
from spam_lightning.training.module import SpamClassifier

NAMES = ("weather", "sports", "politics", "music")
COUNTS = (240, 70, 30, 12)  # imbalanced: macro, micro and weighted averages differ
ABS = 1e-6


def imbalanced_predictions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with COUNTS per class and softmax probabilities that favour the true class by a class-dependent
    amount: each class gets its own precision and recall."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
    logits = rng.normal(0.0, 1.0, (len(labels), len(COUNTS)))
    logits[np.arange(len(labels)), labels] += np.array([1.5, 1.0, 0.6, 0.9])[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


def sklearn_multiclass(probs: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    predicted = probs.argmax(axis=1)
    classes = list(range(probs.shape[1]))
    averaged = {
        average: precision_recall_fscore_support(labels, predicted, labels=classes, average=average, zero_division=0)
        for average in ("macro", "micro", "weighted")
    }
    per = precision_recall_fscore_support(labels, predicted, labels=classes, average=None, zero_division=0)
    return {
        "averaged": averaged,
        "per_class": per,
        "balanced_accuracy": balanced_accuracy_score(labels, predicted),
        "accuracy": accuracy_score(labels, predicted),
        "auroc": roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def assert_averages_differ(oracle: dict[str, object]) -> None:
    """The case must tell the averages apart, or a metric with the wrong average would pass."""
    averaged = oracle["averaged"]
    for i, metric in enumerate(("precision", "recall", "f1")):
        macro, micro, weighted = (averaged[a][i] for a in ("macro", "micro", "weighted"))
        assert min(abs(macro - micro), abs(macro - weighted)) > 0.01, metric
        if metric != "recall":  # weighted recall is micro recall (the accuracy) for any single-label data
            assert abs(micro - weighted) > 0.01, metric
    assert abs(oracle["balanced_accuracy"] - oracle["accuracy"]) > 0.01


def assert_multiclass_equal(ours: dict[str, float], oracle: dict[str, object], names: tuple[str, ...]) -> None:
    macro = oracle["averaged"]["macro"]
    for i, metric in enumerate(("precision", "recall", "f1")):
        assert ours[metric] == pytest.approx(macro[i], abs=ABS), metric
        for c, name in enumerate(names):
            assert ours[f"{metric}_{name}"] == pytest.approx(oracle["per_class"][i][c], abs=ABS), f"{metric}_{name}"
    assert ours["accuracy"] == pytest.approx(oracle["balanced_accuracy"], abs=ABS)  # macro recall, as documented
    assert ours["auroc"] == pytest.approx(oracle["auroc"], abs=ABS)


# -- metrics.py: what training and the baseline log ---------------------------------------------------------------


def test_training_metrics_multiclass_equal_sklearn_macro() -> None:
    probs, labels = imbalanced_predictions()
    oracle = sklearn_multiclass(probs, labels)
    assert_averages_differ(oracle)
    metrics = classification_metrics(len(NAMES), prefix="")
    for chunk in np.array_split(np.arange(len(labels)), 5):  # accumulated over batches, as in an epoch
        metrics.update(torch.from_numpy(probs[chunk]), torch.from_numpy(labels[chunk]))
    ours = {k: float(v) for k, v in per_class(metrics.compute(), NAMES).items()}
    assert_multiclass_equal(ours, oracle, NAMES)


def sklearn_binary(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    predicted = (scores > threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", pos_label=1, zero_division=0
    )
    return {
        "accuracy": accuracy_score(labels, predicted),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": roc_auc_score(labels, scores),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }


def binary_case(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (70 of 300 positive) and scores that overlap, some exactly at 0.5 (not positive)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], [230, 70]))
    scores = 1 / (1 + np.exp(-(rng.normal(0.0, 1.2, len(labels)) + 1.3 * labels - 0.4)))
    scores[:6] = 0.5
    return scores, labels


def test_training_metrics_binary_equal_sklearn() -> None:
    scores, labels = binary_case()
    oracle = sklearn_binary(scores, labels)
    # precision and recall of the positive class (spam) differ from those of class 0 and from their averages
    assert abs(oracle["precision"] - oracle["recall"]) > 0.01
    metrics = classification_metrics(2, prefix="")
    metrics.update(torch.from_numpy(scores), torch.from_numpy(labels))
    ours = {k: float(v) for k, v in per_class(metrics.compute(), ("ham", "spam")).items()}
    assert set(ours) == {"accuracy", "precision", "recall", "f1", "auroc"}
    for name in ours:
        assert ours[name] == pytest.approx(oracle[name], abs=ABS), name


# -- evaluate.py ----------------------------------------------------------------------------------------------------


def test_evaluate_multiclass_metrics_equal_sklearn_macro() -> None:
    probs, labels = imbalanced_predictions(seed=2)
    oracle = sklearn_multiclass(probs, labels)
    assert_averages_differ(oracle)
    ours = multiclass_metrics(torch.from_numpy(probs), torch.from_numpy(labels), NAMES)
    assert_multiclass_equal(ours, oracle, NAMES)
    assert ours["confusion_matrix"] == oracle["confusion_matrix"]  # rows: the true class


def test_evaluate_binary_metrics_equal_sklearn() -> None:
    scores, labels = binary_case(seed=3)
    oracle = sklearn_binary(scores, labels)
    ours = binary_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert ours[name] == pytest.approx(oracle[name], abs=ABS), name
    (tn, fp), (fn, tp) = oracle["confusion_matrix"]
    assert ours["confusion_matrix"] == oracle["confusion_matrix"]
    assert (ours["tn"], ours["fp"], ours["fn"], ours["tp"]) == (tn, fp, fn, tp)


# -- the training loop: SpamClassifier's logged metrics and confusion matrix, and metrics.json -------------------


def tiny_classifier(num_classes: int) -> SpamClassifier:
    torch.manual_seed(0)
    model = SpamClassifier.from_options(
        arch={"emb_dim": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
        pretrained=None,
        num_classes=num_classes,
        pool="mean",
    )
    make_nontrivial(model.net)  # logits of order 1 that vary from text to text: every class gets predicted
    return model.eval()


def test_test_loop_metrics_equal_sklearn_on_the_models_own_predictions() -> None:
    model = tiny_classifier(len(NAMES))
    generator = torch.Generator().manual_seed(5)
    labels = torch.repeat_interleave(torch.arange(len(NAMES)), torch.tensor([90, 40, 20, 10]))
    labels = labels[torch.randperm(len(labels), generator=generator)]
    input_ids = torch.randint(0, 1000, (len(labels), 12), generator=generator)
    lengths = torch.full((len(labels),), 12)
    batches = [
        {"input_ids": input_ids[i : i + 32], "lengths": lengths[i : i + 32], "labels": labels[i : i + 32]}
        for i in range(0, len(labels), 32)
    ]
    with torch.no_grad():
        probs = model(input_ids, lengths).softmax(dim=-1).double().numpy()
    oracle = sklearn_multiclass(probs, labels.numpy())
    assert_averages_differ(oracle)

    (logged,) = quiet_trainer().test(model, DataLoader(batches, batch_size=None), verbose=False)
    ours = {k.removeprefix("test/"): v for k, v in logged.items()}
    assert_multiclass_equal(ours, oracle, tuple(str(i) for i in range(len(NAMES))))  # no data module: class ids
    assert model.test_confusion_matrix.tolist() == oracle["confusion_matrix"]


def test_metrics_json_equals_sklearn_on_the_runs_test_scores(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """A short run's metrics.json test metrics and confusion matrix, against sklearn on test_scores.csv: the label
    and P(spam) of each test text as the run's test loop scored them."""
    metrics = train_smoke(tmp_path, sms_zip, tokenizer_file, "trainer.limit_train_batches=3", "report=false")
    with (tmp_path / "run" / "test_scores.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]  # label, P(positive class)
    labels = np.array([int(label) for label, _ in rows])
    scores = np.array([float(score) for _, score in rows])
    assert len(labels) == 300 and 0 < labels.sum() < 300
    oracle = sklearn_binary(scores, labels)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert written == metrics["test"]
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert written[name] == pytest.approx(oracle[name], abs=2e-6), name
    assert written["confusion_matrix"] == oracle["confusion_matrix"]
    # the loss: the mean cross-entropy over every test text (example-weighted over batches of unequal size)
    assert written["loss"] == pytest.approx(log_loss(labels, scores), abs=1e-5)
