"""Evaluate a trained classifier on a split of its training data or on any labelled CSV/TSV.

Two classes: metrics at the decision threshold (0.5 by default, as in training) on P(positive class) (the model's
`positive_class`: spam for the SMS data): accuracy, the positive class's precision, recall, F1 and AUROC, the
confusion matrix and the misclassified texts. With `target_precision`, a threshold is chosen on the validation split
(the lowest one whose precision of the positive class there reaches the target, i.e. the best recall) and its
precision/recall on the evaluated data are reported. More classes: the most probable class is predicted (no
threshold), macro and per-class metrics. Confusion matrices are in class-id order, rows the true class. Writes
evaluation.json, misclassified.jsonl, confusion_matrix.png (and pr_curve.png for two classes) into out_dir
(default_out_dir: never into an exported model folder).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from spam_lightning.data.modules import CsvDataModule, SmsSpamDataModule
from spam_lightning.data.sms_spam import SPLITS, parse_split_csv, read_split_file, splits_dir
from spam_lightning.data.tables import (
    DELIMITERS,
    decode_utf8,
    encode_labels,
    read_labelled_table,
    split_lines,
)
from spam_lightning.errors import DataError
from spam_lightning.files import read_json_object, refuse_replacing, require_file
from spam_lightning.inference.checkpoint import run_dir_of
from spam_lightning.inference.metrics import binary_metrics, multiclass_metrics, predicted_ids
from spam_lightning.inference.predictor import Predictor, check_options, load_predictor
from spam_lightning.inference.report import (
    plot_confusion_matrix,
    plot_pr_curve,
    plot_training_curves,
    precision_recall_at,
)
from spam_lightning.paths import project_dir

log = logging.getLogger(__name__)

EVALUATION_FILES = ("evaluation.json", "misclassified.jsonl", "confusion_matrix.png", "pr_curve.png")  # in out_dir


# --------------------------------------------------------------------------------------------------
# Labelled data
# --------------------------------------------------------------------------------------------------


def load_split(predictor: Predictor, split: str, data_dir: str | None = None) -> tuple[list[str], list[int]]:
    """A split of the model's training data, checked against the split hashes its checkpoint recorded.

    The folder is the recorded seed's `splits_dir` in `data_dir`, else in the data_dir training recorded.
    Missing split files are made again from the recorded source and seed, as training made them.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    data = predictor.training.get("data") or {}
    if data.get("kind") == "csv":  # made again from the recorded files (their hashes checked) and settings
        df = CsvDataModule.from_record(data).read_split(split)
        return df["text"].tolist(), df["label"].tolist()
    directory = Path(data_dir or data.get("data_dir") or "data/sms_spam").expanduser()
    seed = data.get("seed", 123)
    path = splits_dir(directory, seed) / f"{split}.csv"
    if not path.is_file():
        log.info("%s is missing: making the splits from the training data config", path)
        SmsSpamDataModule(
            source=data.get("source"),
            data_dir=str(directory),
            seed=seed,
            verify_checksum=data.get("verify_checksum", True),
        ).prepare_data()
    content, actual = read_split_file(path)  # the bytes checked are the bytes parsed
    expected = (data.get("splits_sha256") or {}).get(f"{split}.csv")
    if expected is None:
        log.warning("the model records no hash of %s.csv: cannot check it is the split it was trained with", split)
    elif actual != expected:
        raise DataError(
            f"{path} is not the {split} split this model was trained with (sha256 differs: another data source); "
            "pass data_dir=FOLDER, the data.data_dir training used (its seed-S/ subfolder holds the splits)"
        )
    df = parse_split_csv(content, path)
    return df["text"].tolist(), df["label"].tolist()


def read_labelled(
    path: str | Path, names: Sequence[str], column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[int]]:
    """Texts and class ids of a labelled file: a CSV/TSV with a header naming `column` and `label_column` (read as
    data=csv reads its files), or a headerless UCI-style file of `label<TAB>text` lines (e.g. SMSSpamCollection).
    Labels are the model's class `names`, or their ids (data.tables.encode_labels). Empty texts are kept: scoring
    skips them and the evaluation counts them."""
    file = require_file(path, "data_file", DataError, "give a labelled CSV/TSV file")
    data = file.read_bytes()
    text = decode_utf8(data, str(file))
    sep = DELIMITERS.get(file.suffix.lower(), "\t")  # a UCI file has no suffix
    first_line = text.split("\n", 1)[0].removesuffix("\r")
    header = first_line.split(sep)
    if column in header and label_column in header:
        table = read_labelled_table(file, column, label_column, sep, data, empty_texts=True)
        first_row = 2
    elif "\t" in first_line and first_line.partition("\t")[0].strip() in {*names, *map(str, range(len(names)))}:
        rows = [line.partition("\t")[::2] for line in split_lines(text)]
        table = pd.DataFrame(rows, columns=["label", "text"]).assign(label=lambda t: t["label"].str.strip())
        first_row = 1
    else:
        raise DataError(
            f"{file}: expected a header with columns {column!r} and {label_column!r} (set column=, label_column=) "
            f"or 'label<TAB>text' lines; the first line is {header!r}"
        )
    if table.empty:
        raise DataError(f"{file}: no labelled texts")
    labels = encode_labels(table["label"], names, file, "evaluated", accept_ids=True, first_row=first_row)
    return table["text"].tolist(), labels


# --------------------------------------------------------------------------------------------------
# Metrics and threshold choice
# --------------------------------------------------------------------------------------------------


def choose_threshold(scores: Sequence[float], labels: Sequence[int], target_precision: float) -> float | None:
    """The lowest threshold t (positive iff score > t; `labels` 1 for the positive class, else 0) whose precision
    reaches the target: the best recall there.

    t lies halfway between the last score called positive and the next lower score. None if no threshold
    reaches the target.
    """
    ranked = sorted(zip(scores, labels, strict=True), key=lambda pair: -pair[0])
    best, tp = None, 0
    for k, (score, label) in enumerate(ranked):
        tp += label
        lower = ranked[k + 1][0] if k + 1 < len(ranked) else None
        if lower == score:
            continue  # a threshold cannot separate equal scores
        if tp / (k + 1) >= target_precision:
            best = (score + lower) / 2 if lower is not None else score / 2
    return best


# --------------------------------------------------------------------------------------------------
# `python evaluate.py` (Hydra, conf/evaluate.yaml)
# --------------------------------------------------------------------------------------------------


def score_texts(predictor: Predictor, texts: list[str], batch_size: int) -> tuple[list[int], list[list[float]], int]:
    """Row indices that could be classified, their class probabilities, and the number of truncated texts."""
    probs, encoded = predictor.class_probabilities(texts, batch_size)
    rows = [i for i, p in enumerate(probs) if p is not None]
    skipped = len(texts) - len(rows)
    if skipped:
        log.warning("%d texts not classified (empty or invalid) are left out of the metrics", skipped)
    return rows, [probs[i] for i in rows], sum(e.truncated for e in encoded)  # type: ignore[misc]


def misclassified_records(
    texts: list[str],
    labels: list[int],
    rows: list[int],
    probs: torch.Tensor,
    names: Sequence[str],
    positive: int | None,
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """misclassified.jsonl's records of the classified `rows` (`probs` in their order), predicted as `predict` does
    (metrics.predicted_ids): row, label, predicted, probabilities per class, positive_probability (two classes),
    text."""
    out = []
    predicted = predicted_ids(probs, positive, threshold).tolist()
    for i, p, guess in zip(rows, probs.tolist(), predicted, strict=True):
        if guess != labels[i]:
            record = {"row": i, "label": names[labels[i]], "predicted": names[guess]}
            record["probabilities"] = dict(zip(names, p, strict=True))
            if positive is not None:
                record["positive_probability"] = p[positive]
            out.append({**record, "text": texts[i]})
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """One evaluation for any number of classes; two classes add the threshold on P(positive class), its choice on
    the validation split and the PR curve."""
    check_options(cfg)
    name = Path(cfg.data_file).stem if cfg.get("data_file") else cfg.split
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(cfg, name)
    # before the model loads: evaluate's files replace no input, and no file but an earlier evaluation's
    earlier = read_json_object(out_dir / "evaluation.json") or {}
    ours = EVALUATION_FILES if {"model", "data", "n", "metrics", "n_misclassified"} <= earlier.keys() else ()
    inputs = {key: cfg.get(key) for key in ("ckpt_path", "model_dir", "data_file", "tokenizer_file")}
    refuse_replacing(out_dir, EVALUATION_FILES, ours, inputs, "out_dir", "evaluate.py")
    predictor = load_predictor(cfg.get("ckpt_path"), cfg.get("model_dir"), cfg.get("tokenizer_file"), cfg.device)
    # Both refused for more than two classes, saying why, before anything is read or written.
    threshold = predictor.decision_threshold(cfg.get("threshold"))
    target = cfg.get("target_precision")
    if target == "auto":
        target = 0.99 if predictor.binary else None
    elif target is not None:
        target = predictor.decision_threshold(float(target), "target_precision")
    names, positive = predictor.preprocessing.labels, predictor.preprocessing.positive_index
    if cfg.get("data_file"):
        data_name = str(cfg.data_file)
        texts, labels = read_labelled(cfg.data_file, names, cfg.column, cfg.label_column)
    else:
        data_name = cfg.split
        texts, labels = load_split(predictor, cfg.split, cfg.get("data_dir"))
    rows, probs, truncated = score_texts(predictor, texts, cfg.batch_size)
    y = [labels[i] for i in rows]
    prob_t = torch.tensor(probs, dtype=torch.float64).reshape(-1, len(names))
    label_t = torch.tensor(y, dtype=torch.long)
    misclassified = misclassified_records(texts, labels, rows, prob_t, names, positive, threshold or 0.5)
    result: dict[str, Any] = {
        "model": str(cfg.get("ckpt_path") or cfg.get("model_dir")),
        "data": data_name,
        "labels": list(names),
        # two classes: the threshold, precision, recall, F1 and AUROC are this class's; more: none, macro metrics
        "positive_class": names[positive] if positive is not None else None,
        "n": len(texts),
        "n_skipped": len(texts) - len(rows),
        "n_truncated": truncated,
    }
    if positive is None:
        result["metrics"] = multiclass_metrics(prob_t, label_t, names)
    else:
        assert threshold is not None
        score_t = prob_t[:, positive]
        result["threshold"] = threshold
        result["metrics"] = binary_metrics(score_t, label_t, threshold, positive)
        result["threshold_selection"] = (
            _select_threshold(predictor, cfg, name, target, score_t.tolist(), y) if target is not None else None
        )
    result["n_misclassified"] = len(misclassified)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "misclassified.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(m, ensure_ascii=False, allow_nan=False) + "\n" for m in misclassified)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    title = f"{name} (t={threshold:g})" if threshold is not None else name
    plots = [
        plot_confusion_matrix(result["metrics"]["confusion_matrix"], out_dir / "confusion_matrix.png", title, names)
    ]
    if positive is not None:
        plots.append(_pr_curve(result, score_t, y, positive, out_dir / "pr_curve.png", name))
    if cfg.get("ckpt_path"):  # the run's training curves, into the run directory
        run_dir = _model_home(cfg)
        if (run_dir / "logs" / "metrics.csv").is_file():
            plots += plot_training_curves(run_dir / "logs" / "metrics.csv", run_dir)
    _print_summary(result, name, misclassified[: cfg.show_misclassified], out_dir, plots)
    return result


def _pr_curve(
    result: dict[str, Any], scores: torch.Tensor, labels: list[int], positive: int, path: Path, name: str
) -> Path:
    """The PR curve of P(positive class), marking the decision threshold and the one chosen on validation."""
    threshold, selection = result["threshold"], result["threshold_selection"]
    targets = [int(label == positive) for label in labels]
    points = {f"threshold {threshold:g}": precision_recall_at(scores.tolist(), targets, threshold)}
    if selection and selection["threshold"] is not None:
        points[f"chosen on validation (target {selection['target_precision']:g})"] = (
            selection["evaluated"]["precision"], selection["evaluated"]["recall"],
        )  # fmt: skip
    return plot_pr_curve(
        scores, torch.tensor(targets), path, points, title=name, positive_class=result["positive_class"]
    )


def matrix_lines(names: Sequence[str], matrix: Sequence[Sequence[int]]) -> list[str]:
    """A confusion matrix as printed: a header, then one row per true class, in class-id order."""
    width = max(10, *(len(n) + 2 for n in names))
    return [
        "confusion matrix (rows: true, columns: predicted; class-id order)",
        f"{'':<{width}}" + "".join(f"{n[: width - 1]:>{width}}" for n in names),
        *(f"{n:<{width}}" + "".join(f"{c:>{width}}" for c in row) for n, row in zip(names, matrix, strict=True)),
    ]


def _select_threshold(
    predictor: Predictor, cfg: DictConfig, name: str, target: float, scores: list[float], labels: list[int]
) -> dict[str, Any] | None:
    """The threshold on P(positive class) chosen on the validation split for `target` precision of the positive
    class, and its precision, recall and confusion matrix on the evaluated data (`scores`, class ids `labels`)."""
    names, positive = predictor.preprocessing.labels, predictor.preprocessing.positive_index
    assert positive is not None
    try:
        val_texts, val_labels = load_split(predictor, "validation", cfg.get("data_dir"))
    except (DataError, OSError) as err:
        log.warning("no threshold choice: the validation split is not available (%s)", err)
        return None
    val_rows, val_probs, _ = score_texts(predictor, val_texts, cfg.batch_size)
    val_scores = [p[positive] for p in val_probs]
    val_targets = [int(val_labels[i] == positive) for i in val_rows]
    threshold = choose_threshold(val_scores, val_targets, target)
    selection: dict[str, Any] = {"target_precision": target, "threshold": threshold}
    if threshold is None:
        log.warning("no threshold reaches %s precision %g on the validation split", names[positive], target)
        return selection
    val_p, val_r = precision_recall_at(val_scores, val_targets, threshold)
    p, r = precision_recall_at(scores, [int(label == positive) for label in labels], threshold)
    matrix = binary_metrics(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels), threshold, positive)[
        "confusion_matrix"
    ]
    selection["validation"] = {"precision": round(val_p, 6), "recall": round(val_r, 6)}
    selection["evaluated"] = {
        "data": name, "precision": round(p, 6), "recall": round(r, 6), "confusion_matrix": matrix,
    }  # fmt: skip
    return selection


def default_out_dir(cfg: DictConfig, name: str) -> Path:
    """Where an evaluation goes without out_dir=: RUN_DIR/evaluation/<name> for a checkpoint (its run directory),
    evaluations/<parent folder name>/<folder name>/<name> in the project folder (paths.project_dir) for an exported
    folder (e.g. runs/smoke/export -> evaluations/smoke/export/test), which stays exactly as export.py wrote it.
    `name` is the split or the data file's stem."""
    if not cfg.get("model_dir"):
        return _model_home(cfg) / "evaluation" / name
    model_dir = Path(cfg.model_dir).expanduser().resolve()
    out_dir = project_dir() / "evaluations" / Path(model_dir.parent.name, model_dir.name, name)
    if out_dir.resolve().is_relative_to(model_dir):
        raise ValueError(f"the default out_dir {out_dir.resolve()} is inside model_dir: pass out_dir=FOLDER")
    return out_dir


def _model_home(cfg: DictConfig) -> Path:
    """The run directory of cfg.ckpt_path (above checkpoints/, else the checkpoint's folder)."""
    ckpt = Path(cfg.ckpt_path)
    return run_dir_of(ckpt) or ckpt.parent


def _print_summary(
    result: dict[str, Any], name: str, misclassified: list[dict[str, Any]], out_dir: Path, plots: list[Path]
) -> None:
    m, positive, names = result["metrics"], result["positive_class"], result["labels"]
    lines = [
        f"{result['model']} on {result['data']}: {result['n']} texts"
        + (f", {len(names)} classes" if positive is None else "")
        + (f" ({result['n_skipped']} not classified)" if result["n_skipped"] else "")
        + (f", {result['n_truncated']} truncated as in training" if result["n_truncated"] else ""),
    ]
    if positive is None:
        width = max(10, *(len(n) + 2 for n in names))
        lines += [
            f"macro: accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  "
            f"recall {m['recall']:.4f}  f1 {m['f1']:.4f}  auroc (one-vs-rest) {m['auroc']:.4f}",
            f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}",
            *(
                f"{n:<{width}}" + "".join(f"{m[f'{k}_{n}']:>10.4f}" for k in ("precision", "recall", "f1"))
                for n in (x.replace("/", "_") for x in names)
            ),
        ]
    else:
        auroc = f"{m['auroc']:.4f}" if m["auroc"] is not None else "n/a"
        lines.append(
            f"positive class {positive}, threshold {result['threshold']:g} on P({positive}): "
            f"accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
            f"f1 {m['f1']:.4f}  auroc {auroc}"
        )
    lines += matrix_lines(names, m["confusion_matrix"])
    sel = result.get("threshold_selection")
    if sel is not None and sel["threshold"] is not None:
        lines += [
            f"threshold for {positive} precision >= {sel['target_precision']:g} on validation: {sel['threshold']!r} "
            f"(validation precision {sel['validation']['precision']:.4f}, recall {sel['validation']['recall']:.4f})",
            f"  on {name}: precision {sel['evaluated']['precision']:.4f}, recall {sel['evaluated']['recall']:.4f}",
        ]
    elif sel is not None:
        lines.append(f"no threshold reaches {positive} precision {sel['target_precision']:g} on validation")
    count = result["n_misclassified"]
    lines.append(f"{count} misclassified" + (" (all in misclassified.jsonl):" if count else ""))
    for mis in misclassified:
        text = " ".join(mis["text"].split())
        text = text if len(text) <= 90 else text[:89] + "…"
        score = (
            f"P({positive})={mis['positive_probability']:.3f}"
            if positive
            else f"P={max(mis['probabilities'].values()):.3f}"
        )
        lines.append(f"  {mis['label']:>4} -> {mis['predicted']:<4} {score}  {text}")
    ours = ", ".join(p.name for p in plots if p.parent == out_dir)
    lines.append(f"wrote evaluation.json, misclassified.jsonl, {ours} to {out_dir}")
    curves = [p for p in plots if p.parent != out_dir]
    if curves:
        lines.append(f"wrote {', '.join(p.name for p in curves)} to {curves[0].parent}")
    print("\n".join(lines), flush=True)
