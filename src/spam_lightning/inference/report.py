"""PNG plots of a run: loss and accuracy per epoch (as the book's plots), confusion matrix, PR curve.

Matplotlib's object API with the Agg renderer: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

import csv
import json
import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchmetrics.functional.classification import binary_average_precision, binary_precision_recall_curve

from spam_lightning.files import atomic_write_bytes

log = logging.getLogger(__name__)

CURVES = {"loss": "Loss", "accuracy": "Accuracy"}


def read_epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """{'train/loss': {epoch: value}, 'val/loss': ..., 'train/accuracy': ..., 'val/accuracy': ...} from a
    Lightning CSVLogger file. Rows of the final evaluation (those logging */tp) are not training curves."""
    series: dict[str, dict[int, float]] = {f"{s}/{m}": {} for m in CURVES for s in ("train", "val")}
    with metrics_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch") or any(v for k, v in row.items() if k and k.endswith("/tp")):
                continue
            for key, values in series.items():
                if row.get(key):
                    values[int(float(row["epoch"]))] = float(row[key])
    return series


def plot_training_curves(metrics_csv: Path, out_dir: Path) -> list[Path]:
    """loss.png and accuracy.png: training and validation value per epoch."""
    series = read_epoch_metrics(metrics_csv)
    paths = []
    for metric, ylabel in CURVES.items():
        train, val = series[f"train/{metric}"], series[f"val/{metric}"]
        if not train and not val:
            continue
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        for values, label, style in ((train, f"Training {metric}", "-"), (val, f"Validation {metric}", "-.")):
            if values:  # Lightning's epoch 0 is the first epoch
                epochs = sorted(values)
                ax.plot([e + 1 for e in epochs], [values[e] for e in epochs], style, marker="o", label=label)
        ax.set_xlabel("Epochs")
        ax.set_ylabel(ylabel)
        # Whole epochs. min_n_ticks=1: MaxNLocator keeps to integers only where the view holds min_n_ticks of
        # them, and a one-epoch run's view (0.945 to 1.055) holds one.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{metric}.png"))
    return paths


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: Path, title: str, labels: Sequence[str]) -> Path:
    """CxC counts; rows are the true class, columns the predicted class (`labels`, in class-id order)."""
    size = max(3.2, 0.6 * len(labels) + 2)
    fig = Figure(figsize=(size + 0.4, size))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    ticks = list(range(len(labels)))
    ax.set_xticks(ticks, list(labels), rotation=45 if len(labels) > 3 else 0)
    ax.set_yticks(ticks, list(labels))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    _fit_title(fig, ax, f"Confusion matrix {title}".strip())
    return _save(fig, path)


def plot_pr_curve(
    scores: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    points: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
    *,
    positive_class: str,
) -> Path:
    """Precision against recall of `positive_class` over all thresholds: `scores` are P(positive_class), `labels` 1
    for a text of that class, else 0; `points` marks operating points {name: (precision, recall)}."""
    precision, recall, _ = binary_precision_recall_curve(scores, labels)
    ap = float(binary_average_precision(scores, labels))
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.plot(recall.tolist(), precision.tolist(), drawstyle="steps-post", label=f"AP = {ap:.4f}")
    for (name, (p, r)), marker in zip((points or {}).items(), "os^D", strict=False):
        ax.plot([r], [p], marker, label=f"{name}: P={p:.3f} R={r:.3f}")
    ax.set_xlabel(f"Recall ({positive_class})")
    ax.set_ylabel(f"Precision ({positive_class})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize="small")
    _fit_title(fig, ax, f"Precision-recall {title}".strip())
    return _save(fig, path)


TEST_SCORES = "test_scores.csv"


def write_test_scores(run_dir: str | Path, scored: torch.Tensor) -> Path:
    """test_scores.csv: the label (class id) and P(positive class) (metrics.json's positive_class) of each test text
    (any order), as the run's test loop scored them."""
    rows = "".join(f"{int(label)},{score!r}\n" for label, score in scored.tolist())
    path = Path(run_dir) / TEST_SCORES
    atomic_write_bytes(path, ("label,positive_probability\n" + rows).encode())
    return path


def write_training_report(run_dir: str | Path) -> list[Path]:
    """The end-of-training plots, written into run_dir; returns the files written.

    loss.png and accuracy.png from logs/metrics.csv, confusion_matrix.png from metrics.json's test
    confusion matrix, pr_curve.png from test_scores.csv (what the test loop scored: nothing is predicted
    again). Missing inputs are skipped.
    """
    run_dir = Path(run_dir)
    paths: list[Path] = []
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if metrics_csv.is_file():
        paths += plot_training_curves(metrics_csv, run_dir)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    names = metrics.get("labels", ["ham", "spam"])
    matrix = metrics.get("test", {}).get("confusion_matrix")
    if matrix is not None:
        paths.append(plot_confusion_matrix(matrix, run_dir / "confusion_matrix.png", "(test)", names))
    scores_file = run_dir / TEST_SCORES
    positive_class = metrics.get("positive_class")
    if scores_file.is_file() and positive_class in names:
        positive = names.index(positive_class)
        with scores_file.open(newline="", encoding="utf-8") as f:
            rows = [(int(row["label"]) == positive, float(row["positive_probability"])) for row in csv.DictReader(f)]
        targets, scores = [int(target) for target, _ in rows], [score for _, score in rows]
        points = {"threshold 0.5": precision_recall_at(scores, targets, 0.5)}
        pr_path = run_dir / "pr_curve.png"
        scored = torch.tensor(scores, dtype=torch.float64)
        paths.append(
            plot_pr_curve(scored, torch.tensor(targets), pr_path, points, "(test)", positive_class=positive_class)
        )
    return paths


def precision_recall_at(scores: Sequence[float], labels: Sequence[int], threshold: float) -> tuple[float, float]:
    """The positive class's precision and recall when a text is called positive iff its score (P(positive)) >
    threshold; `labels` are 1 for a text of the positive class, else 0."""
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if s > threshold and y == 1)
    predicted, positives = sum(1 for s in scores if s > threshold), sum(labels)
    return (tp / predicted if predicted else 0.0), (tp / positives if positives else 0.0)


def _fit_title(fig: Figure, ax: Axes, title: str) -> None:
    """Set ax's title and tight_layout the figure, wrapping the title onto more lines (at spaces, and inside
    words longer than a line, such as file names) until it lies within the figure: never clipped."""
    width = max(len(title), 8)
    while True:
        text = ax.set_title("\n".join(textwrap.wrap(title, width)))
        fig.tight_layout()
        box, page = text.get_window_extent(), fig.bbox
        centre = (box.x0 + box.x1) / 2  # the title is centred over the axes, not the figure
        room = 2 * min(centre - page.x0, page.x1 - centre)
        if box.width <= room or width <= 8:
            return
        longest = max(len(line) for line in text.get_text().split("\n"))
        width = max(8, min(longest - 1, int(longest * room / box.width)))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
