"""The classification metrics of training (torchmetrics' metric classes: exact under DDP, accumulated per step,
computed once per epoch) and of evaluation (`binary_metrics`, `multiclass_metrics`: the same ones at once).

Two classes: those of the positive class (`Preprocessing.positive_class`: spam for the SMS data), whichever class id
it has: score P(positive), target label == positive. More classes: macro averages (AUROC: one against the rest), and
precision, recall and F1 per class (`*_per_class`, logged per class name). Confusion matrices are in class-id order
(rows: true class), for two classes as for more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

# The inputs are our own softmax outputs and class ids: torchmetrics' checks of them (values in range, `unique`
# labels) would only cost host-device syncs on every step (training's steps must not wait for the GPU).
NO_CHECKS: dict[str, Any] = {"validate_args": False}


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    if num_classes == 2:
        metrics = {
            "accuracy": BinaryAccuracy(**NO_CHECKS),
            "precision": BinaryPrecision(**NO_CHECKS),
            "recall": BinaryRecall(**NO_CHECKS),
            "f1": BinaryF1Score(**NO_CHECKS),
            "auroc": BinaryAUROC(**NO_CHECKS),
        }
    else:
        kw: dict[str, Any] = {"num_classes": num_classes, "average": "macro", **NO_CHECKS}
        metrics = {
            "accuracy": MulticlassAccuracy(**kw),
            "precision": MulticlassPrecision(**kw),
            "recall": MulticlassRecall(**kw),
            "f1": MulticlassF1Score(**kw),
            "auroc": MulticlassAUROC(**kw),
            **{
                f"{name}_per_class": metric(num_classes=num_classes, average=None, **NO_CHECKS)
                for name, metric in (
                    ("precision", MulticlassPrecision),
                    ("recall", MulticlassRecall),
                    ("f1", MulticlassF1Score),
                )
            },
        }
    return MetricCollection(metrics, prefix=prefix)  # type: ignore[arg-type]


class WeightedMean(Metric):
    """The example-weighted mean of per-batch values (a loss): exact under DDP with uneven shards, unlike averaging
    rank means. torchmetrics' MeanMetric checks every update for NaNs (two host-device syncs per step on a GPU);
    here a NaN simply stays NaN, as MeanMetric(nan_strategy=nan) leaves it."""

    full_state_update = False
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.float() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


def update_metrics(metrics: MetricCollection, probs: torch.Tensor, labels: torch.Tensor, positive: int | None) -> None:
    """Accumulate (N, C) probabilities of class-id `labels`: two classes, the positive class's metrics (score
    P(positive), target label == positive); more classes (positive None), the probabilities."""
    if positive is None:
        metrics.update(probs, labels)
    else:
        metrics.update(probs[:, positive], (labels == positive).long())


def per_class(values: Mapping[str, torch.Tensor], labels: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """Computed metrics with each per-class vector (`precision_per_class`, ...) split into one value per class,
    named after the class (`precision_weather`; the class id without `labels`)."""
    out = {}
    for name, value in values.items():
        if value.ndim == 0:
            out[name] = value
            continue
        base = name.removesuffix("_per_class")
        for i, v in enumerate(value):
            label = labels[i] if labels is not None and len(labels) == len(value) else str(i)
            out[f"{base}_{label.replace('/', '_')}"] = v
    return out


def predicted_ids(probs: torch.Tensor, positive: int | None, threshold: float = 0.5) -> torch.Tensor:
    """(N,) predicted class ids of (N, C) probabilities: two classes, `binary_predicted_ids` of P(positive); more
    classes (positive None), the most probable one."""
    if positive is None:
        return probs.argmax(dim=1)
    return binary_predicted_ids(probs[:, positive], positive, threshold)


def binary_predicted_ids(scores: torch.Tensor, positive: int, threshold: float = 0.5) -> torch.Tensor:
    """(N,) class ids from (N,) P(positive): the positive class iff its probability > threshold, else the other."""
    return torch.where(scores > threshold, positive, 1 - positive)


def binary_counts(matrix: Sequence[Sequence[float]], positive: int) -> dict[str, float]:
    """tp, fp, tn, fn of the positive class from a 2x2 confusion matrix in class-id order (rows: true class)."""
    negative = 1 - positive
    return {
        "tp": matrix[positive][positive],
        "fp": matrix[negative][positive],
        "tn": matrix[negative][negative],
        "fn": matrix[positive][negative],
    }


def binary_metrics(
    scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5, positive: int = 1
) -> dict[str, Any]:
    """The training metrics of the positive class (class id `positive`; `scores` are P(positive), `labels` class
    ids; positive iff score > threshold), its tp/fp/tn/fn and the confusion matrix in class-id order."""
    targets = (labels == positive).long()
    metrics: dict[str, Any] = {
        name: round(float(fn_(scores, targets, threshold=threshold)), 6)
        for name, fn_ in (
            ("accuracy", binary_accuracy),
            ("precision", binary_precision),
            ("recall", binary_recall),
            ("f1", binary_f1_score),
        )
    }
    metrics["auroc"] = round(float(binary_auroc(scores, targets)), 6) if 0 < targets.sum() < len(targets) else None
    predicted = binary_predicted_ids(scores, positive, threshold)
    matrix = multiclass_confusion_matrix(predicted, labels, num_classes=2).tolist()
    return {**metrics, **binary_counts(matrix, positive), "confusion_matrix": matrix}


def multiclass_metrics(probs: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """The training metrics of more than 2 classes (the most probable class is predicted): macro accuracy,
    precision, recall, F1 and one-vs-rest AUROC, the per-class precision/recall/F1, the confusion matrix."""
    kw: dict[str, Any] = {"num_classes": len(names)}
    metrics: dict[str, Any] = {
        name: round(float(fn_(probs, labels, average="macro", **kw)), 6)
        for name, fn_ in (
            ("accuracy", multiclass_accuracy),
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
            ("auroc", multiclass_auroc),
        )
    }
    for name, fn_ in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
        for label, value in zip(names, fn_(probs, labels, average=None, **kw).tolist(), strict=True):
            metrics[f"{name}_{label.replace('/', '_')}"] = round(float(value), 6)
    metrics["confusion_matrix"] = multiclass_confusion_matrix(probs, labels, **kw).tolist()
    return metrics
