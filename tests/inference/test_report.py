"""Plots (titles that fit the figure, whole-epoch ticks); evaluate.py never writes into an exported folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers.smoke import compose_cfg, copy_smoke
from matplotlib.figure import Figure

import spam_lightning.inference.report as report
from spam_lightning.inference.evaluate import run as evaluate_run
from spam_lightning.inference.export import export_checkpoint

EVALUATION_FILES = {"evaluation.json", "misclassified.jsonl", "confusion_matrix.png", "pr_curve.png"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict:
    """A one-epoch smoke run (tiny model, 20 steps) and its export: run dir, best ckpt, export folder."""
    tmp = tmp_path_factory.mktemp("smoke")
    ckpt = Path(copy_smoke(smoke_source, tmp)["best_checkpoint"])
    export = tmp / "run" / "export"
    export_checkpoint(ckpt, export)
    return {"run_dir": tmp / "run", "ckpt": ckpt, "export": export, "tmp": tmp}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """{file name: Figure} of every plot the report module saves while the test runs (still written)."""
    saved: dict[str, Figure] = {}
    save = report._save

    def capture(fig: Figure, path: Path) -> Path:
        saved[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", capture)
    return saved


def title_of(fig: Figure) -> str:
    """The title after drawing, checked to lie within the figure (nothing clipped)."""
    fig.draw_without_rendering()
    title = fig.axes[0].title
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (
        f"title {title.get_text()!r} at {box.extents} outside the figure {page.extents}"
    )
    return title.get_text()


def visible_xtick_labels(fig: Figure) -> list[str]:
    fig.draw_without_rendering()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    return [label.get_text() for label, x in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True) if lo <= x <= hi]


# -- titles -----------------------------------------------------------------------------------------


def test_long_titles_fit_the_figure(smoke: dict, sms_tsv: Path, tmp_path: Path, figures: dict[str, Figure]) -> None:
    stem = "sms_messages_labelled_by_the_support_team_for_the_spam_filter_review_2024"
    data = tmp_path / f"{stem}.tsv"
    data.write_text("".join(sms_tsv.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    cfg = compose_cfg(
        "evaluate", f"ckpt_path={smoke['ckpt']}", f"data_file={data}", f"out_dir={tmp_path / 'out'}",
        "device=cpu", "target_precision=null",
    )  # fmt: skip
    evaluate_run(cfg)
    for name in ("confusion_matrix.png", "pr_curve.png"):
        title = title_of(figures[name])
        assert "\n" in title and stem in "".join(title.split())  # wrapped, nothing left out

    path = str(tmp_path / "a" / "much" / "longer" / "folder" / "path" / f"{stem}.tsv")
    report.plot_confusion_matrix([[120, 3], [9, 168]], tmp_path / "cm.png", f"{path} (t=0.5)", ("ham", "spam"))
    scores, labels = torch.linspace(0, 1, 20, dtype=torch.float64), torch.tensor([0, 1] * 10)
    report.plot_pr_curve(scores, labels, tmp_path / "pr.png", {"threshold 0.5": (0.5, 0.5)}, path, positive_class="a")
    for name in ("cm.png", "pr.png"):
        assert path in "".join(title_of(figures[name]).split())

    report.plot_confusion_matrix([[120, 3], [9, 168]], tmp_path / "cm.png", "test (t=0.5)", ("ham", "spam"))
    assert title_of(figures["cm.png"]) == "Confusion matrix test (t=0.5)"  # a short title stays one line


# -- epoch ticks ------------------------------------------------------------------------------------


def test_epoch_ticks_are_integers(smoke: dict, tmp_path: Path, figures: dict[str, Figure]) -> None:
    report.plot_training_curves(smoke["run_dir"] / "logs" / "metrics.csv", tmp_path / "one")  # a real 1-epoch run
    assert {"loss.png", "accuracy.png"} <= set(figures)
    for name in ("loss.png", "accuracy.png"):
        assert visible_xtick_labels(figures[name]) == ["1"]

    three = tmp_path / "metrics.csv"  # a 3-epoch run's epoch rows, as Lightning's CSVLogger writes them
    with three.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/accuracy", "train/loss", "val/accuracy", "val/loss"])
        for epoch in range(3):
            writer.writerow([epoch, 10 * epoch + 9, 0.7 + 0.1 * epoch, 0.6 - 0.1 * epoch, 0.72 + 0.1 * epoch, 0.5])
    figures.clear()
    report.plot_training_curves(three, tmp_path / "three")
    for name in ("loss.png", "accuracy.png"):
        assert visible_xtick_labels(figures[name]) == ["1", "2", "3"]


# -- evaluate.py model_dir=... ----------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder: a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_evaluate_model_dir_leaves_the_export_unchanged(
    smoke: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = smoke["export"]
    before = snapshot(export)
    assert {"model.safetensors", "config.json", "gpt2.tiktoken", "README.md"} <= set(before)  # the hf layout
    monkeypatch.setenv("SPAM_LIGHTNING_ROOT", str(tmp_path))  # the project folder: where evaluations/ goes
    monkeypatch.chdir(export)  # not the current directory

    data = f"data_dir={smoke['tmp'] / 'data'}"  # an export records no local path: where the splits are is given
    result = evaluate_run(compose_cfg("evaluate", f"model_dir={export}", "device=cpu", data))
    assert snapshot(export) == before
    out = tmp_path / "evaluations" / "run" / "export" / "test"  # evaluations/<parent>/<folder>/<split>
    assert {p.name for p in out.iterdir()} == EVALUATION_FILES
    assert result["n"] == 300

    elsewhere = tmp_path / "elsewhere"  # out_dir= still decides
    evaluate_run(compose_cfg("evaluate", f"model_dir={export}", "device=cpu", data, f"out_dir={elsewhere}"))
    assert {p.name for p in elsewhere.iterdir()} == EVALUATION_FILES
    assert snapshot(export) == before

    monkeypatch.setenv("SPAM_LIGHTNING_ROOT", str(export))  # the default would land inside the export: refused
    with pytest.raises(ValueError, match="inside model_dir"):
        evaluate_run(compose_cfg("evaluate", "model_dir=.", "device=cpu", data, "target_precision=null"))
    assert snapshot(export) == before
