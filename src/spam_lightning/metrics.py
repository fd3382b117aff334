"""The classification metrics of training and evaluation (torchmetrics: exact under DDP, accumulated per step,
computed once per epoch). Binary: class 1 (spam) is the positive class; multi-class: macro averages (AUROC: one
against the rest), and precision, recall and F1 per class (`*_per_class`, logged per class name)."""

from __future__ import annotations

from typing import Any

from torchmetrics import MetricCollection
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


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    if num_classes == 2:
        metrics = {
            "accuracy": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
        }
    else:
        kw: dict[str, Any] = {"num_classes": num_classes, "average": "macro"}
        metrics = {
            "accuracy": MulticlassAccuracy(**kw),
            "precision": MulticlassPrecision(**kw),
            "recall": MulticlassRecall(**kw),
            "f1": MulticlassF1Score(**kw),
            "auroc": MulticlassAUROC(**kw),
            **{
                f"{name}_per_class": metric(num_classes=num_classes, average=None)
                for name, metric in (
                    ("precision", MulticlassPrecision),
                    ("recall", MulticlassRecall),
                    ("f1", MulticlassF1Score),
                )
            },
        }
    return MetricCollection(metrics, prefix=prefix)  # type: ignore[arg-type]
