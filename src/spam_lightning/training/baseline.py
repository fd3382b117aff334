"""The book's non-LLM baseline (ch06 IMDb bonus): TF-IDF features and logistic regression (scikit-learn), trained on
the splits a data config gives train.py, evaluated with the training metrics (`spam_lightning.inference.metrics`),
so its table reads like train.py's. Two classes: the data's positive class iff its probability > 0.5, and the
metrics are that class's; more classes: the most probable class."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from spam_lightning.data.modules import TextDataModule
from spam_lightning.data.sms_spam import SPLITS
from spam_lightning.errors import ConfigError
from spam_lightning.inference.metrics import classification_metrics, per_class, update_metrics

log = logging.getLogger(__name__)
REPORTED = ("accuracy", "precision", "recall", "f1", "auroc")


def split_metrics(
    probs: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...], positive: int | None
) -> dict[str, Any]:
    """The metrics training logs for a split (two classes: those of class id `positive`; else macro and per class)."""
    metrics = classification_metrics(len(names), prefix="")
    update_metrics(metrics, probs, labels, positive)
    return {name: round(float(value), 6) for name, value in per_class(metrics.compute(), names).items()}


def run(cfg: DictConfig) -> dict[str, Any]:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise ConfigError('baseline.py needs scikit-learn: pip install ".[baseline]"') from err
    datamodule: TextDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    splits = {name: datamodule.read_split(name) for name in SPLITS}
    names, positive_class = datamodule.labels, datamodule.positive_class
    positive = None if positive_class is None else names.index(positive_class)
    vectorizer = TfidfVectorizer(max_features=int(cfg.max_features), ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(splits["train"]["text"])
    classifier = LogisticRegression(C=float(cfg.C), max_iter=int(cfg.max_iter), random_state=int(cfg.seed))
    classifier.fit(features, splits["train"]["label"])
    results: dict[str, Any] = {"model": "tfidf+logistic_regression", "labels": list(names)}
    results["positive_class"] = positive_class
    for name, frame in splits.items():
        probs = torch.zeros(len(frame), len(names), dtype=torch.float64)
        # classes_ holds the class ids seen in training (all of them: the data modules refuse an absent class)
        probs[:, classifier.classes_] = torch.from_numpy(classifier.predict_proba(vectorizer.transform(frame["text"])))
        results[name] = split_metrics(probs, torch.tensor(frame["label"].tolist()), names, positive)
    print(table(results), flush=True)
    if cfg.get("out_dir"):
        out = Path(cfg.out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        (out / "baseline.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def table(results: dict[str, Any]) -> str:
    """The metrics table of train.py's results (without loss: logistic regression's is not comparable)."""
    header = f"{'split':<12}" + "".join(f"{m:>10}" for m in REPORTED)
    rows = [f"{s:<12}" + "".join(f"{results[s].get(m, float('nan')):>10.4f}" for m in REPORTED) for s in SPLITS]
    return "\n".join(["TF-IDF + logistic regression (scikit-learn)", header, *rows])
